//! Operators' hands: the pass lock holds however the database path is spelled; a
//! database path that is not a file says so; config, secret and token files are read only
//! when they are regular files of sane size; a config with an inline secret that others
//! can read is warned about; and a hand-written `next_check_at` in another form still
//! makes the charge due.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;

use konbini_reconciler::lock::PassLock;
use univapay_sim::Credentials;

use crate::config::TestConfig;
use crate::helpers::{TestApp, make_due, one_fatal_line, run_within, write_config_with_database};
use crate::util::TestCommand;

fn mkfifo(path: &Path) {
    let c = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: mkfifo(3) with a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
}

/// The daemon or another `--once` holds the lock through one spelling of the database;
/// a `--once` configured with another spelling must see it held (exit 3), not run a
/// second pass beside it.
#[tokio::test(flavor = "multi_thread")]
async fn the_lock_holds_however_the_database_path_is_spelled() {
    let app = TestApp::spawn().await;
    app.create("a", 100);
    let dir = app.dir.path();
    std::fs::create_dir(dir.join("x")).unwrap();
    std::os::unix::fs::symlink(&app.db_path, dir.join("link.db")).unwrap();
    std::os::unix::fs::symlink(dir, dir.join("dirlink")).unwrap();
    let held = PassLock::for_database(&app.db_path)
        .try_acquire()
        .unwrap()
        .expect("free");
    for spelling in [
        dir.join("link.db"),
        Path::new("ledger.db").to_owned(),
        Path::new("./x/../ledger.db").to_owned(),
        dir.join("dirlink/x/../ledger.db"),
    ] {
        write_config_with_database(&app, &spelling);
        let out = run_within(app.command().once(), Duration::from_secs(20)).await;
        assert_eq!(
            out.code(),
            Some(3),
            "{}: {}",
            spelling.display(),
            out.stderr()
        );
        assert!(
            out.stderr().contains("another pass is running"),
            "{}",
            out.stderr()
        );
    }
    assert_eq!(app.sim.counters().requests, 0, "no second pass ran");
    drop(held);
    let out = run_within(app.command().once(), Duration::from_secs(20)).await;
    out.assert_code(0);
    assert!(app.row("a").last_checked_at.is_some());
}

/// `/dev/null`, a directory, a FIFO: one line saying it is not a regular file, no hint
/// at a full disk, nothing created beside it, and no wait on the FIFO.
#[tokio::test(flavor = "multi_thread")]
async fn a_database_path_that_is_not_a_file_says_so() {
    let app = TestApp::spawn().await;
    let dev_null_lock = Path::new("/dev/null.lock");
    let had_dev_null_lock = dev_null_lock.exists();
    let fifo = app.dir.path().join("ledger.fifo");
    mkfifo(&fifo);
    let a_dir = app.dir.path().join("dir.db");
    std::fs::create_dir(&a_dir).unwrap();
    for (path, kind) in [
        (Path::new("/dev/null").to_owned(), "a character device"),
        (a_dir.clone(), "a directory"),
        (fifo.clone(), "a FIFO"),
    ] {
        write_config_with_database(&app, &path);
        for daemon in [false, true] {
            let mut cmd = app.command();
            if !daemon {
                cmd.once();
            }
            let out = run_within(&mut cmd, Duration::from_secs(20)).await;
            let line = one_fatal_line(&out);
            assert!(
                line.contains(&format!("not a regular file ({kind})"))
                    && line.contains(&path.display().to_string())
                    && line.contains("database.path"),
                "{line}"
            );
            assert!(!line.contains("disk"), "{line}");
        }
    }
    assert!(
        had_dev_null_lock || !dev_null_lock.exists(),
        "no lock file made beside /dev/null"
    );
    assert!(!a_dir.join("x").exists());
    assert!(!app.dir.path().join("ledger.fifo.lock").exists());
}

/// `--config /dev/zero` and a secret that is a FIFO or `/dev/urandom` used to read until
/// memory ran out or block forever: one line, exit 1, at once.
#[tokio::test(flavor = "multi_thread")]
async fn config_and_secret_files_must_be_regular_files() {
    let app = TestApp::spawn().await;
    let out = run_within(
        TestCommand::new(app.dir.path())
            .config(Path::new("/dev/zero"))
            .once(),
        Duration::from_secs(10),
    )
    .await;
    let line = one_fatal_line(&out);
    assert!(
        line.contains("/dev/zero") && line.contains("not a regular file"),
        "{line}"
    );

    let fifo = app.dir.path().join("secret.fifo");
    mkfifo(&fifo);
    let creds = Credentials::default();
    for secret_file in [fifo.display().to_string(), "/dev/urandom".to_owned()] {
        TestConfig::new(&app.sim.base_url(), &creds, &app.db_path)
            .with(|c| {
                c.api.secret = None;
                c.api.secret_file = Some(secret_file.clone());
            })
            .write(&app.config_path);
        let out = run_within(app.command().once(), Duration::from_secs(10)).await;
        assert_eq!(out.code(), Some(1), "{secret_file}");
        let line = one_fatal_line(&out);
        assert!(
            line.contains("api.secret_file") && line.contains("not a regular file"),
            "{line}"
        );
    }
    assert_eq!(app.sim.counters().requests, 0);
}

/// Like ssh with a private key: a config holding the secret inline that group or others
/// can read is one warning line (the pass still runs), and the line holds no secret.
#[tokio::test(flavor = "multi_thread")]
async fn a_readable_config_with_an_inline_secret_is_one_warning() {
    let app = TestApp::spawn().await;
    app.create("a", 100);
    std::fs::set_permissions(
        &app.config_path,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    let out = run_within(app.command().once(), Duration::from_secs(20)).await;
    out.assert_code(0);
    let err = out.stderr();
    let warnings: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("readable by group or others"))
        .collect();
    assert_eq!(warnings.len(), 1, "{err}");
    assert!(
        warnings[0].contains("WARN") && warnings[0].contains("644"),
        "{err}"
    );
    let secret = Credentials::default().secret;
    assert!(!err.contains(&secret), "the secret was logged");
    // Private again: no warning.
    std::fs::set_permissions(
        &app.config_path,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let out = run_within(app.command().once(), Duration::from_secs(20)).await;
    assert!(!out.stderr().contains("readable by group or others"));
}

/// `UPDATE charges SET next_check_at = 'now'` (and `datetime('now')`, an offset, lower
/// case) makes the charge due in the next pass instead of parking it: the one-liner in
/// the README.
#[tokio::test(flavor = "multi_thread")]
async fn a_hand_written_next_check_at_makes_the_charge_due() {
    let app = TestApp::spawn().await;
    app.create("k", 100);
    app.sim.update("k", |c| c.awaiting("1234", None));
    make_due(&app);
    let out = run_within(app.command().once(), Duration::from_secs(20)).await;
    out.assert_code(0);
    assert_eq!(app.sim.requests_for("k"), 1);
    let forms = [
        "'now'",
        "datetime('now')",
        "strftime('%Y-%m-%dT%H:%M:%S+09:00', 'now', '+9 hours')",
        "lower(strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))",
        "'NOW'",
    ];
    for (i, form) in forms.iter().enumerate() {
        app.db()
            .execute(
                &format!("UPDATE charges SET next_check_at = {form} WHERE charge_id = 'k'"),
                [],
            )
            .unwrap();
        let out = run_within(app.command().once(), Duration::from_secs(20)).await;
        assert_eq!(out.code(), Some(0), "{form}: {}", out.stderr());
        assert_eq!(
            app.sim.requests_for("k"),
            i as u64 + 2,
            "{form} made it due"
        );
    }
    assert_eq!(app.row("k").state, "awaiting");
}
