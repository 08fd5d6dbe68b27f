//! Bad input from operators (config files, environment): a bad config must be one stderr
//! line naming the key, exit status 1, and must neither create a database nor change an
//! existing one.

use std::path::{Path, PathBuf};

use konbini_reconciler::ledger::Ledger;
use univapay_sim::{Credentials, Sim};

use crate::config::TestConfig;
use crate::helpers::{STORE, assert_same, chmod, open_up, snapshot};
use crate::util::TestCommand;

const TOKEN: &str = "tok.en.jwt";
const SECRET: &str = "s3cret-value";

/// What the fake accepts and the good configs hold.
fn credentials() -> Credentials {
    Credentials {
        secret: SECRET.into(),
        app_token: TOKEN.into(),
    }
}

/// A config case: the file, extra environment, and the text the error line must contain.
struct Case {
    name: &'static str,
    text: String,
    env: Vec<(&'static str, String)>,
    needle: String,
    /// Run as an unprivileged user (for a secret file root could read anyway).
    unprivileged: bool,
}

/// A case whose file is `config`.
fn case(name: &'static str, config: &TestConfig, needle: impl Into<String>) -> Case {
    Case {
        name,
        text: config.to_toml(),
        env: Vec::new(),
        needle: needle.into(),
        unprivileged: false,
    }
}

/// A case whose file is not TOML, so no config builder could write it.
fn not_toml(name: &'static str, text: String, needle: &str) -> Case {
    Case {
        text,
        ..case(name, &TestConfig::default(), needle)
    }
}

/// Every bad config, each pointing at the fake at `base` and the ledger at `db`. A key set
/// with [`TestConfig::set`] is the one at fault.
fn cases(etc: &Path, base: &str, db: &Path) -> Vec<Case> {
    let good = TestConfig::new(base, &credentials(), db);
    let no_creds = good.clone().with(|c| {
        c.api.app_token = None;
        c.api.secret = None;
    });
    let token_only = good.clone().with(|c| c.api.secret = None);
    let secret_file = |path: &str| {
        let path = path.to_owned();
        token_only.clone().with(|c| c.api.secret_file = Some(path))
    };
    // For the files that are not TOML, spelled out so that the line named is plain to see.
    let api =
        format!("[api]\nbase_url = \"{base}\"\napp_token = \"{TOKEN}\"\nsecret = \"{SECRET}\"\n");
    let db = db.display();
    let mut v = vec![
        case("empty file", &TestConfig::default(), "api.app_token"),
        case(
            "missing secret",
            &token_only,
            "api.secret: missing (set api.secret or api.secret_file, or $UNIVAPAY_SECRET)",
        ),
        case(
            "missing app token",
            &no_creds
                .clone()
                .with(|c| c.api.secret = Some(SECRET.into())),
            "api.app_token: missing",
        ),
        case(
            "empty secret",
            &token_only.clone().with(|c| c.api.secret = Some("".into())),
            "api.secret: is empty",
        ),
        case(
            "secret with a space",
            &token_only
                .clone()
                .with(|c| c.api.secret = Some("two words".into())),
            "api.secret: contains whitespace",
        ),
        case(
            "app token with a newline",
            &good.clone().with(|c| c.api.app_token = Some("a\nb".into())),
            "api.app_token: contains whitespace",
        ),
        case(
            "bad duration",
            &good
                .clone()
                .set("reconcile.recheck_interval", "5 minutes later"),
            "reconcile.recheck_interval",
        ),
        case(
            "zero timeout",
            &good.clone().set("api.timeout", "0s"),
            "api.timeout",
        ),
        case(
            "negative duration",
            &good.clone().set("database.busy_timeout", "-1s"),
            "database.busy_timeout",
        ),
        case(
            "duration as a number",
            &good.clone().set("api.timeout", 30),
            "api.timeout",
        ),
        case(
            "absurd duration",
            &good
                .clone()
                .set("reconcile.recheck_interval", "1000000years"),
            "reconcile.recheck_interval",
        ),
        case(
            "absurd busy timeout",
            &good.clone().set("database.busy_timeout", "30days"),
            "database.busy_timeout",
        ),
        case(
            "absurd backoff",
            &good
                .clone()
                .set("reconcile.retry_backoff", "500000years")
                .set("reconcile.retry_backoff_max", "500000years"),
            "reconcile.retry_backoff",
        ),
        case(
            "cron with five fields",
            &good.clone().set("schedule.cron", "*/5 * * * *"),
            "schedule.cron",
        ),
        case(
            "cron out of range",
            &good.clone().set("schedule.cron", "0 99 * * * *"),
            "schedule.cron",
        ),
        case(
            "cron in words",
            &good.clone().set("schedule.cron", "every five minutes"),
            "schedule.cron",
        ),
        case(
            "unknown key",
            &good.clone().set("api.secrt", "x"),
            "unknown field `secrt`",
        ),
        case(
            "unknown section",
            &good.clone().set("databse.path", "x.db"),
            "unknown field `databse`",
        ),
        case(
            "unknown top-level key",
            &good.clone().set("verbose", true),
            "unknown field `verbose`",
        ),
        case(
            "non-https remote URL",
            &good.clone().set("api.base_url", "http://api.univapay.com"),
            "api.base_url: http:// is only allowed for loopback hosts",
        ),
        case(
            "ftp URL",
            &good.clone().set("api.base_url", "ftp://127.0.0.1"),
            "api.base_url",
        ),
        case(
            "URL with credentials",
            &good
                .clone()
                .set("api.base_url", "https://user:pw@api.univapay.com"),
            "api.base_url: must not carry credentials",
        ),
        case(
            "not a URL",
            &good.clone().set("api.base_url", "api dot univapay"),
            "api.base_url: not a URL",
        ),
        case(
            "URL as a number",
            &good.clone().set("api.base_url", 443),
            "api.base_url",
        ),
        case(
            "concurrency 0",
            &good.clone().set("api.concurrency", 0),
            "api.concurrency",
        ),
        case(
            "concurrency negative",
            &good.clone().set("api.concurrency", -3),
            "api.concurrency",
        ),
        case(
            "concurrency huge",
            &good.clone().set("api.concurrency", 100000),
            "api.concurrency",
        ),
        case(
            "concurrency as text",
            &good.clone().set("api.concurrency", "8"),
            "api.concurrency",
        ),
        case(
            "requests per minute 0",
            &good.clone().set("api.max_requests_per_minute", 0),
            "api.max_requests_per_minute",
        ),
        case(
            "missing secret_file",
            &secret_file("no-such-file"),
            "api.secret_file: cannot read",
        ),
        case(
            "secret_file is a directory",
            &secret_file("secrets.d"),
            "api.secret_file: cannot read",
        ),
        case(
            "empty secret_file",
            &secret_file("empty-secret"),
            "api.secret_file: is empty",
        ),
        case(
            "secret_file needs CREDENTIALS_DIRECTORY",
            &secret_file("${CREDENTIALS_DIRECTORY}/s"),
            "api.secret_file: uses ${CREDENTIALS_DIRECTORY} but $CREDENTIALS_DIRECTORY is not set",
        ),
        case(
            "secret and secret_file",
            &good
                .clone()
                .with(|c| c.api.secret_file = Some("locked-secret".into())),
            "api.secret_file: set either api.secret or api.secret_file, not both",
        ),
        case(
            "bad timezone",
            &good.clone().set("schedule.timezone", "Asia/Osaka"),
            "schedule.timezone",
        ),
        not_toml("TOML syntax error", "[api\n".into(), "line 1"),
        not_toml(
            "unterminated string",
            format!("{api}[database]\npath = \"{db}\n"),
            "line 6",
        ),
        not_toml(
            "duplicate key",
            format!("{api}timeout = \"1s\"\ntimeout = \"2s\"\n[database]\npath = \"{db}\"\n"),
            "line 6",
        ),
        case(
            "boolean as text",
            &good.clone().set("schedule.run_on_start", "yes"),
            "schedule.run_on_start",
        ),
        case(
            "path as a number",
            &good.clone().set("database.path", 3),
            "database.path",
        ),
        case(
            "empty database path",
            &good.clone().set("database.path", ""),
            "database.path: must not be empty",
        ),
        case(
            "section as a value",
            &good.clone().set("schedule", 5),
            "schedule",
        ),
        case(
            "secret as a number",
            &token_only.clone().set("api.secret", 424242),
            "api.secret: must be a string",
        ),
        case(
            "backoff max below backoff",
            &good
                .clone()
                .set("reconcile.retry_backoff", "10m")
                .set("reconcile.retry_backoff_max", "1m"),
            "reconcile.retry_backoff_max",
        ),
        case(
            "not_found_limit 0",
            &good.clone().set("reconcile.not_found_limit", 0),
            "reconcile.not_found_limit",
        ),
        case(
            "batch_size 0",
            &good.clone().set("reconcile.batch_size", 0),
            "reconcile.batch_size",
        ),
        case(
            "drain_timeout 0",
            &good.clone().set("schedule.drain_timeout", "0s"),
            "schedule.drain_timeout",
        ),
        case(
            "unknown log format",
            &good.clone().set("log.format", "xml"),
            "log.format",
        ),
    ];
    let mut env_secret = case(
        "secret from the environment with a space",
        &good,
        "$UNIVAPAY_SECRET: contains whitespace",
    );
    env_secret.env = vec![("UNIVAPAY_SECRET", "two words".to_owned())];
    v.push(env_secret);
    let mut env_token = case(
        "app token from the environment with a tab",
        &good,
        "$UNIVAPAY_APP_TOKEN: contains whitespace",
    );
    env_token.env = vec![("UNIVAPAY_APP_TOKEN", "a\tb".to_owned())];
    v.push(env_token);
    let mut locked = case(
        "unreadable secret_file",
        &secret_file("locked-secret"),
        "api.secret_file: cannot read",
    );
    locked.unprivileged = true;
    v.push(locked);
    let mut creds_dir = case(
        "CREDENTIALS_DIRECTORY without the file",
        &secret_file("${CREDENTIALS_DIRECTORY}/univapay-secret"),
        "api.secret_file: cannot read",
    );
    creds_dir.env = vec![(
        "CREDENTIALS_DIRECTORY",
        etc.join("creds").display().to_string(),
    )];
    v.push(creds_dir);
    v.extend(budget_cases(&good));
    v
}

/// The budget share and the recheck schedule (issue 10).
fn budget_cases(good: &TestConfig) -> Vec<Case> {
    let schedule = |steps: &str| {
        good.clone()
            .set("reconcile.recheck_schedule", toml_value(steps))
    };
    let key = "reconcile.recheck_schedule";
    vec![
        case(
            "budget share 0",
            &good.clone().set("api.budget_share", 0),
            "api.budget_share",
        ),
        case(
            "budget share above 1",
            &good.clone().set("api.budget_share", 1.5),
            "api.budget_share",
        ),
        case(
            "negative budget share",
            &good.clone().set("api.budget_share", -0.5),
            "api.budget_share",
        ),
        case(
            "budget share as text",
            &good.clone().set("api.budget_share", "half"),
            "api.budget_share",
        ),
        case("empty schedule", &schedule("[]"), key),
        case(
            "unsorted schedule",
            &schedule(
                r#"[{ age = "0s", every = "1m" }, { age = "1d", every = "30m" }, { age = "1h", every = "10m" }]"#,
            ),
            key,
        ),
        case(
            "schedule with a repeated age",
            &schedule(r#"[{ age = "0s", every = "1m" }, { age = "0s", every = "2m" }]"#),
            key,
        ),
        case(
            "schedule with a zero interval",
            &schedule(r#"[{ age = "0s", every = "0s" }]"#),
            key,
        ),
        case(
            "schedule with a negative interval",
            &schedule(r#"[{ age = "0s", every = "-1m" }]"#),
            key,
        ),
        case(
            "schedule not starting at age 0",
            &schedule(r#"[{ age = "1h", every = "10m" }]"#),
            key,
        ),
        case(
            "schedule step with an unknown key",
            &schedule(r#"[{ age = "0s", every = "1m", often = true }]"#),
            key,
        ),
        case(
            "schedule and recheck_interval",
            &schedule(r#"[{ age = "0s", every = "1m" }]"#).set("reconcile.recheck_interval", "5m"),
            key,
        ),
        case(
            "absurd deadline watch",
            &good.clone().set("reconcile.deadline_watch", "1000000years"),
            "reconcile.deadline_watch",
        ),
    ]
}

/// A TOML value written out, for the cases whose value is an array of tables.
fn toml_value(text: &str) -> toml::Value {
    let table: toml::Table = format!("x = {text}").parse().expect("test TOML");
    table["x"].clone()
}

/// Runs the binary on the case's file and checks the one-line refusal.
fn refuse(c: &Case, etc: &Path) {
    let cfg = etc.join("config.toml");
    std::fs::write(&cfg, &c.text).unwrap();
    chmod(&cfg, 0o644);
    let mut cmd = TestCommand::new(etc);
    cmd.config(&cfg).once();
    for (k, v) in &c.env {
        cmd.env(k, v);
    }
    if c.unprivileged {
        cmd.unprivileged();
    }
    let out = cmd.run();
    let err = out.stderr();
    assert_eq!(out.code(), Some(1), "{}: {err}", c.name);
    assert_eq!(err.lines().count(), 1, "{}: one line: {err}", c.name);
    let line = out.assert_fatal(&["invalid config", &c.needle]);
    assert!(
        line.contains("config.toml"),
        "{}: names the file: {line}",
        c.name
    );
    assert!(
        !line.contains(SECRET) && !line.contains("two words") && !line.contains("424242"),
        "{}: a secret echoed: {line}",
        c.name
    );
    assert!(out.stdout().is_empty(), "{}", c.name);
}

/// `data/ledger.db` with one charge, writable by anyone so an unprivileged run could
/// change it if it got that far; `etc/` with the secret files the cases refer to.
fn layout() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let root = tempfile::tempdir().unwrap();
    let (data, etc) = (root.path().join("data"), root.path().join("etc"));
    std::fs::create_dir_all(&data).unwrap();
    std::fs::create_dir_all(etc.join("secrets.d")).unwrap();
    std::fs::create_dir_all(etc.join("creds")).unwrap();
    std::fs::write(etc.join("empty-secret"), "").unwrap();
    std::fs::write(etc.join("locked-secret"), "locked").unwrap();
    chmod(&etc.join("locked-secret"), 0o000);
    let db = data.join("ledger.db");
    drop(Ledger::open(&db, std::time::Duration::from_secs(1)).unwrap());
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute(
            "INSERT INTO charges (charge_id, store_id, requested_amount) VALUES ('c1', ?1, 100)",
            [STORE],
        )
        .unwrap();
    open_up(root.path());
    for d in [&data, &etc] {
        chmod(d, 0o777);
    }
    for f in snapshot(&data).keys() {
        chmod(f, 0o666);
    }
    (root, data, etc)
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_configs_are_one_line_naming_the_key_and_touch_no_database() {
    let sim = Sim::start(credentials()).await.unwrap();
    let (_root, data, etc) = layout();
    let existing = data.join("ledger.db");
    let fresh = data.join("fresh.db");
    let before = snapshot(&data);

    // The control: the same files with nothing wrong do create and change databases, as
    // the unprivileged user too, so "nothing was written" below is not for want of access.
    for unprivileged in [false, true] {
        let cfg = etc.join("config.toml");
        TestConfig::new(&sim.base_url(), &credentials(), &fresh).write(&cfg);
        chmod(&cfg, 0o644);
        let mut cmd = TestCommand::new(&etc);
        cmd.config(&cfg).once();
        if unprivileged {
            cmd.unprivileged();
        }
        let out = cmd.run();
        out.assert_code(0);
        assert!(fresh.exists(), "the control run created its database");
        for suffix in ["", "-wal", "-shm", ".lock"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", fresh.display()));
        }
    }

    let mut tried = 0;
    for db in [&existing, &fresh] {
        let all = cases(&etc, &sim.base_url(), db);
        tried = all.len();
        for c in &all {
            refuse(c, &etc);
            assert!(!fresh.exists(), "{}: a database was created", c.name);
        }
    }
    assert_same(&before, &snapshot(&data));
    assert_eq!(
        sim.counters().requests,
        0,
        "no run got as far as asking UnivaPay"
    );
    eprintln!("bad configs tried: {tried}");

    let out = TestCommand::new(&etc)
        .config(&etc.join("missing.toml"))
        .once()
        .run();
    out.assert_fatal(&["cannot read config file", "missing.toml"]);
    let out = TestCommand::new(&etc)
        .config(&etc.join("secrets.d"))
        .once()
        .run();
    out.assert_fatal(&["cannot read config file", "secrets.d"]);
    std::fs::write(etc.join("latin1.toml"), b"[api]\napp_token = \"\xe9\"\n").unwrap();
    let out = TestCommand::new(&etc)
        .config(&etc.join("latin1.toml"))
        .once()
        .run();
    out.assert_fatal(&["cannot read config file", "latin1.toml", "UTF-8"]);
    assert_same(&before, &snapshot(&data));
}
