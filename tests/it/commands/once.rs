//! The real binary and its contract: exit codes, stdout summary, stderr error lines.

use std::path::Path;

use univapay_sim::SimCharge;

use crate::config::TestConfig;
use crate::helpers::TestApp;
use crate::util::TestCommand;

#[tokio::test(flavor = "multi_thread")]
async fn exit_0_on_a_clean_pass() {
    let app = TestApp::spawn().await;
    app.create("a", 100);
    app.sim.update("a", SimCharge::paid);
    let out = app.command().once().run();
    out.assert_code(0);
    let line = out.stdout();
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
    let out = app.command().once().run();
    out.assert_code(2);
    assert!(out.stdout().contains("mismatches 1"));
    // Nothing new next time: the flag is not news twice.
    app.command().once().run().assert_code(0);
}

#[tokio::test(flavor = "multi_thread")]
async fn exit_1_when_credentials_are_rejected() {
    let app = TestApp::spawn().await;
    app.create("a", 100);
    let out = app
        .command()
        .once()
        .env("UNIVAPAY_SECRET", "wrong-secret")
        .run();
    out.assert_code(1);
    let err = out.stderr();
    assert!(err.contains("credentials rejected"), "{err}");
    assert!(!err.contains("wrong-secret"), "secret leaked: {err}");
    assert_eq!(app.row("a").last_checked_at, None);
}

#[tokio::test(flavor = "multi_thread")]
async fn exit_1_when_unreachable() {
    let mut app = TestApp::spawn().await;
    app.create("a", 100);
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    app.reconfigure(|c| c.api.base_url = Some(format!("http://{closed}")));
    let out = app.command().once().run();
    out.assert_code(1);
    assert!(
        out.stderr().contains("could not be reached"),
        "{}",
        out.stderr()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_config_is_one_stderr_line_and_no_database() {
    let app = TestApp::spawn().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("never.db");
    let good = TestConfig::default().with(|c| {
        c.api.app_token = Some("t".into());
        c.api.secret = Some("s".into());
        c.database.path = Some(db.clone());
    });
    let cases = [
        (good.clone().set("api.timeout", "soon"), "api.timeout"),
        (
            good.clone().with(|c| c.api.concurrency = Some(0)),
            "api.concurrency",
        ),
        (good.clone().set("api.colour", "red"), "colour"),
        (
            good.clone()
                .with(|c| c.api.base_url = Some("http://example.com".into())),
            "api.base_url",
        ),
    ];
    for (config, key) in cases {
        let cfg = dir.path().join("bad.toml");
        config.write(&cfg);
        let out = TestCommand::new(app.dir.path()).config(&cfg).once().run();
        assert_eq!(out.code(), Some(1), "{key}");
        let err = out.stderr();
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert!(err.contains(key), "{key}: {err}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(!db.exists(), "no database for a bad config");
    }
    let out = TestCommand::new(app.dir.path())
        .config(&dir.path().join("missing.toml"))
        .once()
        .run();
    out.assert_code(1);
    assert!(out.stderr().contains("missing.toml"));
}

#[tokio::test(flavor = "multi_thread")]
async fn config_from_env_var_and_usage_errors() {
    let app = TestApp::spawn().await;
    app.create("a", 100);
    TestCommand::new(app.dir.path())
        .env("KONBINI_RECONCILER_CONFIG", &app.config_path)
        .once()
        .run()
        .assert_code(0);
    let out = app.command().arg("--nonsense").run();
    assert_eq!(out.code(), Some(1), "a usage error is not a mismatch");
    assert_eq!(out.stderr().lines().count(), 1, "{}", out.stderr());
}

/// Only a regular file is read as the config: a pipe could block forever, a device never
/// end. The refusal is one line naming the file, and nothing is touched.
#[tokio::test(flavor = "multi_thread")]
async fn config_through_a_pipe_or_device_is_refused() {
    let app = TestApp::spawn().await;
    let text = std::fs::read(&app.config_path).unwrap();
    TestCommand::new(app.dir.path())
        .config(Path::new("/dev/stdin"))
        .once()
        .stdin(text)
        .run()
        .assert_fatal(&["/dev/stdin", "not a regular file"]);
    TestCommand::new(app.dir.path())
        .config(Path::new("/dev/zero"))
        .once()
        .run()
        .assert_fatal(&["/dev/zero", "not a regular file"]);
    assert!(app.runs().is_empty(), "no pass may run");
}

#[test]
fn help_and_version() {
    let dir = tempfile::tempdir().unwrap();
    let out = TestCommand::new(dir.path()).arg("--help").run();
    out.assert_code(0);
    assert!(out.stdout().contains("--once"));
    let out = TestCommand::new(dir.path()).arg("--version").run();
    assert!(out.stdout().contains(env!("CARGO_PKG_VERSION")));
}
