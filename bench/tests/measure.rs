//! The launcher that takes a child's resource figures (`konbini-bench --measured`) reports
//! the child's own peak RSS, not that of the process that started the benchmark's runs.

use std::process::Command;

const BIG: usize = 256 << 20;

fn peak_rss_mib(report: &std::path::Path) -> f64 {
    let line = std::fs::read_to_string(report).expect("the launcher wrote its report");
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        fields.len(),
        4,
        "exit, rss, cpu, context switches: {line:?}"
    );
    assert_eq!(fields[0], "0", "/bin/true exits 0");
    fields[1].parse::<f64>().unwrap() / 1024.0
}

#[test]
fn a_child_started_by_a_large_process_reports_its_own_peak() {
    // The test process grows first, as the benchmark does after its 1M-row scenarios.
    let ballast = vec![1u8; BIG];
    std::hint::black_box(&ballast);

    // Spawned directly, the child's rusage carries the spawner's RSS: the reason for the
    // launcher. (If a kernel stops doing this, the launcher is merely unneeded.)
    let direct = Command::new("/bin/true").spawn().unwrap();
    // SAFETY: rusage is plain data; the pid is our own child.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let mut status = 0;
    let pid = direct.id() as i32;
    assert_eq!(unsafe { libc::wait4(pid, &mut status, 0, &mut ru) }, pid);
    // wait4 reaped it; std must not wait again.
    std::mem::forget(direct);
    let direct_mib = ru.ru_maxrss as f64 / 1024.0;

    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("usage");
    let status = Command::new(env!("CARGO_BIN_EXE_konbini-bench"))
        .arg("--measured")
        .arg(&report)
        .arg("/bin/true")
        .status()
        .unwrap();
    assert!(status.success());
    let launched_mib = peak_rss_mib(&report);
    assert!(
        launched_mib < 64.0,
        "through the launcher /bin/true peaks at {launched_mib:.1} MiB (direct: {direct_mib:.1} MiB)"
    );
}

#[test]
fn the_launcher_passes_the_exit_code_on() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("usage");
    let status = Command::new(env!("CARGO_BIN_EXE_konbini-bench"))
        .arg("--measured")
        .arg(&report)
        .args(["/bin/sh", "-c", "exit 3"])
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(3));
    let line = std::fs::read_to_string(&report).unwrap();
    assert!(line.starts_with("3 "), "{line:?}");
}

#[test]
fn a_program_that_cannot_start_is_exit_127_and_no_report() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("usage");
    let out = Command::new(env!("CARGO_BIN_EXE_konbini-bench"))
        .arg("--measured")
        .arg(&report)
        .arg(dir.path().join("no-such-program"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(127));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot start"), "{err}");
    assert!(!report.exists(), "no account of a program that never ran");
}
