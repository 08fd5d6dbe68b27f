//! Running a child to the end and taking the kernel's account of it (CPU, context
//! switches, peak RSS), through a small launcher process.
//!
//! Why the launcher: on Linux a child's `ru_maxrss` starts from the RSS of the process
//! that spawned it (the spawning address space is what `exec` replaces, and its high-water
//! mark is carried over). After the 1M-row scenarios the benchmark itself holds a few
//! hundred MiB, so every reconciler it spawned directly afterwards reported that as its
//! own peak. The launcher is this binary freshly exec'd (`--measured`), a few MiB, and it
//! is the launcher that spawns and reaps the measured program, so the figure is the
//! program's own.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};

/// The launcher's flag: `konbini-bench --measured REPORT PROGRAM [ARGS...]`.
pub const LAUNCHER_FLAG: &str = "--measured";

/// When set to a directory, every measured program runs under `valgrind
/// --tool=callgrind`, its profile written there (see docs/performance.md).
pub const CALLGRIND_ENV: &str = "KONBINI_BENCH_CALLGRIND";

#[derive(Debug, Clone, PartialEq)]
pub struct Usage {
    pub max_rss_kib: i64,
    pub cpu_secs: f64,
    /// Voluntary and involuntary context switches.
    pub context_switches: i64,
}

impl Usage {
    pub fn per_charge(&self, checked: u64) -> (f64, f64) {
        let n = checked.max(1) as f64;
        (self.cpu_secs * 1e6 / n, self.context_switches as f64 / n)
    }

    fn to_line(&self, exit: i32) -> String {
        format!(
            "{exit} {} {} {}\n",
            self.max_rss_kib, self.cpu_secs, self.context_switches
        )
    }

    fn from_line(line: &str) -> Option<(i32, Usage)> {
        let mut f = line.split_whitespace();
        let exit = f.next()?.parse().ok()?;
        let usage = Usage {
            max_rss_kib: f.next()?.parse().ok()?,
            cpu_secs: f.next()?.parse().ok()?,
            context_switches: f.next()?.parse().ok()?,
        };
        f.next().is_none().then_some((exit, usage))
    }
}

/// Runs `cmd` to the end through the launcher, collecting its output (stderr through a
/// pipe, as under a supervisor) and its own resource figures.
pub fn run_child(cmd: Command) -> Result<(i32, Usage, String, String), String> {
    static N: AtomicU64 = AtomicU64::new(0);
    let report = std::env::temp_dir().join(format!(
        "konbini-bench-usage-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let exe = std::env::current_exe().map_err(|e| format!("own executable: {e}"))?;
    let mut launcher = Command::new(exe);
    launcher.arg(LAUNCHER_FLAG).arg(&report);
    if let Some(dir) = std::env::var_os(CALLGRIND_ENV) {
        // Instruction counts do not depend on what else the machine runs, so two
        // programs can be compared on a shared machine; the CPU seconds are then
        // valgrind's, not the program's.
        let program = Path::new(cmd.get_program());
        let name = program.file_name().unwrap_or(program.as_os_str());
        let out = Path::new(&dir).join(format!("callgrind.{}.%p", name.to_string_lossy()));
        launcher
            .arg("valgrind")
            .arg("--tool=callgrind")
            .arg(format!("--callgrind-out-file={}", out.display()));
    }
    launcher.arg(cmd.get_program()).args(cmd.get_args());
    for (key, value) in cmd.get_envs() {
        match value {
            Some(v) => launcher.env(key, v),
            None => launcher.env_remove(key),
        };
    }
    let (out, err) = collect(launcher, cmd.get_program())?;
    let line = std::fs::read_to_string(&report);
    let _ = std::fs::remove_file(&report);
    let line = line.map_err(|e| {
        format!(
            "no account of {:?} ({e}): {}",
            cmd.get_program(),
            err.trim()
        )
    })?;
    let (exit, usage) =
        Usage::from_line(&line).ok_or_else(|| format!("launcher wrote {line:?}"))?;
    Ok((exit, usage, out, err))
}

/// Spawns the launcher with piped output and reads both streams to the end.
fn collect(mut launcher: Command, program: &std::ffi::OsStr) -> Result<(String, String), String> {
    let mut child = launcher
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start the launcher for {program:?}: {e}"))?;
    let stderr = child.stderr.take();
    // Read stderr on its own thread so a chatty child never blocks on a full pipe.
    let err_reader = std::thread::spawn(move || {
        let mut err = String::new();
        if let Some(mut e) = stderr {
            let _ = e.read_to_string(&mut err);
        }
        err
    });
    let mut out = String::new();
    if let Some(mut o) = child.stdout.take() {
        let _ = o.read_to_string(&mut out);
    }
    let err = err_reader.join().unwrap_or_default();
    child.wait().map_err(|e| format!("launcher: {e}"))?;
    Ok((out, err))
}

/// The launcher: spawns `PROGRAM ARGS...` with this process's stdio and environment,
/// reaps it, writes its exit code and usage to REPORT and exits with its code.
pub fn launcher_main(args: &[String]) -> ! {
    let [report, program, rest @ ..] = args else {
        eprintln!("konbini-bench {LAUNCHER_FLAG} REPORT PROGRAM [ARGS...]");
        std::process::exit(127);
    };
    let child = match Command::new(program).args(rest).spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("konbini-bench: cannot start {program}: {e}");
            std::process::exit(127);
        }
    };
    let (exit, usage) = match wait4(child.id() as i32) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("konbini-bench: {e}");
            std::process::exit(127);
        }
    };
    // wait4 reaped it; tell std so it does not try again.
    std::mem::forget(child);
    if let Err(e) = std::fs::write(Path::new(report), usage.to_line(exit)) {
        eprintln!("konbini-bench: {report}: {e}");
        std::process::exit(127);
    }
    std::process::exit(exit)
}

/// Waits for a child and returns its exit code and the kernel's account of it.
pub fn wait4(pid: i32) -> Result<(i32, Usage), String> {
    reap(pid, 0)?.ok_or_else(|| format!("wait4({pid}): no answer"))
}

/// As [`wait4`], without waiting: `None` while the child runs.
pub fn try_wait4(pid: i32) -> Result<Option<(i32, Usage)>, String> {
    reap(pid, libc::WNOHANG)
}

fn reap(pid: i32, options: i32) -> Result<Option<(i32, Usage)>, String> {
    let mut status = 0;
    // SAFETY: rusage is plain data the kernel fills in; pid is our own child.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::wait4(pid, &mut status, options, &mut ru) };
    if r == 0 && options & libc::WNOHANG != 0 {
        return Ok(None);
    }
    if r != pid {
        return Err(format!("wait4({pid}): {}", std::io::Error::last_os_error()));
    }
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    Ok(Some((
        code,
        Usage {
            // Linux reports ru_maxrss in KiB.
            max_rss_kib: ru.ru_maxrss,
            cpu_secs: t(ru.ru_utime) + t(ru.ru_stime),
            context_switches: ru.ru_nvcsw + ru.ru_nivcsw,
        },
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_line_round_trips() {
        let u = Usage {
            max_rss_kib: 14_020,
            cpu_secs: 1.25,
            context_switches: 77,
        };
        assert_eq!(Usage::from_line(&u.to_line(2)), Some((2, u)));
        assert_eq!(Usage::from_line("0 1 2"), None);
        assert_eq!(Usage::from_line("0 1 2 3 4"), None);
    }
}
