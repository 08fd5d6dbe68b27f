//! The real binary and its contract: exit codes, stdout summary, stderr error lines.

use assert_cmd::Command;
use univapay_sim::SimCharge;

use crate::helpers::TestApp;

/// The binary in the test's directory with a clean environment, so a developer's own
/// settings cannot leak in.
fn bare(app: &TestApp) -> Command {
    let mut cmd = Command::cargo_bin("konbini-reconciler").unwrap();
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .current_dir(app.dir.path());
    cmd
}

/// [`bare`] with the test's config.
fn bin(app: &TestApp) -> Command {
    let mut cmd = bare(app);
    cmd.arg("--config").arg(&app.config_path);
    cmd
}

fn stdout_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn exit_0_on_a_clean_pass() {
    let app = TestApp::spawn().await;
    app.create("a", 100);
    app.sim.update("a", SimCharge::paid);
    let out = bin(&app).arg("--once").output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    let line = stdout_of(&out);
    assert!(
        line.contains("checked 1, transitions 1, mismatches 0, errors 0"),
        "{line}"
    );
    assert_eq!(app.row("a").state, "successful");
}

#[tokio::test(flavor = "multi_thread")]
async fn exit_2_on_a_new_mismatch_then_0() {
    let app = TestApp::spawn().await;
    app.create("m", 100);
    app.sim.update("m", |c| c.paid_with(90, "JPY"));
    let out = bin(&app).arg("--once").output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr_of(&out));
    assert!(stdout_of(&out).contains("mismatches 1"));
    // Nothing new next time: the flag is not news twice.
    let out = bin(&app).arg("--once").output().unwrap();
    assert_eq!(out.status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn exit_1_when_credentials_are_rejected() {
    let app = TestApp::spawn().await;
    app.create("a", 100);
    let out = bin(&app)
        .arg("--once")
        .env("UNIVAPAY_SECRET", "wrong-secret")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr_of(&out);
    assert!(err.contains("credentials rejected"), "{err}");
    assert!(!err.contains("wrong-secret"), "secret leaked: {err}");
    assert_eq!(app.row("a").last_checked_at, None);
}

#[tokio::test(flavor = "multi_thread")]
async fn exit_1_when_unreachable() {
    let app = TestApp::spawn().await;
    app.create("a", 100);
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let text = crate::helpers::config_text(&format!("http://{closed}"), &app.db_path, "");
    std::fs::write(&app.config_path, text).unwrap();
    let out = bin(&app).arg("--once").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr_of(&out).contains("could not be reached"),
        "{}",
        stderr_of(&out)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_config_is_one_stderr_line_and_no_database() {
    let app = TestApp::spawn().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("never.db");
    let cases = [
        ("timeout = \"soon\"", "api.timeout"),
        ("concurrency = 0", "api.concurrency"),
        ("colour = \"red\"", "colour"),
        ("base_url = \"http://example.com\"", "api.base_url"),
    ];
    for (line, key) in cases {
        let text = format!(
            "[api]\napp_token = \"t\"\nsecret = \"s\"\n{line}\n[database]\npath = \"{}\"\n",
            db.display()
        );
        let cfg = dir.path().join("bad.toml");
        std::fs::write(&cfg, text).unwrap();
        let out = bare(&app)
            .arg("--config")
            .arg(&cfg)
            .arg("--once")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{line}");
        let err = stderr_of(&out);
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert!(err.contains(key), "{line}: {err}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(!db.exists(), "no database for a bad config");
    }
    let out = bare(&app)
        .arg("--config")
        .arg(dir.path().join("missing.toml"))
        .arg("--once")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr_of(&out).contains("missing.toml"));
}

#[tokio::test(flavor = "multi_thread")]
async fn config_from_env_var_and_usage_errors() {
    let app = TestApp::spawn().await;
    app.create("a", 100);
    let out = bare(&app)
        .env("KONBINI_RECONCILER_CONFIG", &app.config_path)
        .arg("--once")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr_of(&out));
    let out = bin(&app).arg("--nonsense").output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "a usage error is not a mismatch"
    );
    assert_eq!(stderr_of(&out).lines().count(), 1, "{}", stderr_of(&out));
}

#[test]
fn help_and_version() {
    let out = Command::cargo_bin("konbini-reconciler")
        .unwrap()
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("--once"));
    let out = Command::cargo_bin("konbini-reconciler")
        .unwrap()
        .arg("--version")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
}
