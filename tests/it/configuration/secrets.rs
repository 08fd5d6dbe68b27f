//! Secrets never leave the process except in the Authorization header: not on stdout, not
//! on stderr at any log level, not in the database, not in `Debug` output. The paths of the
//! other resilience tests (a good pass, rejected credentials, hostile answers, bad configs,
//! database trouble) run here with `RUST_LOG=trace` and distinctive credentials, and every
//! byte that comes out is searched for them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use konbini_reconciler::Settings;
use rusqlite::Connection;
use univapay_sim::{Credentials, Reply, RunningSim, Sim, SimCharge};

use crate::config::TestConfig;
use crate::helpers::{STORE, chmod};
use crate::util::{Finished, TestCommand};

const SECRET: &str = "sk-SECRET-9f41c2e7-konbini";
/// JWT-shaped, with a middle part distinctive on its own.
const TOKEN: &str = "eyJhbGciOiJIUzI1NiJ9.eyJUT0tFTi03YjNkIjoxfQ.c2lnLTdiM2Q";
const TOKEN_PART: &str = "eyJUT0tFTi03YjNkIjoxfQ";
/// A wrong secret is still a secret.
const WRONG_SECRET: &str = "sk-WRONG-4d0c8a11-konbini";
/// What a badly written config file holds where the secret should be.
const BAD_SECRETS: [&str; 3] = ["987654321987", "SECRET-with space", "UNQUOTED-SECRET-55c1"];

/// What the fake accepts and the configs hold.
fn credentials() -> Credentials {
    Credentials {
        secret: SECRET.into(),
        app_token: TOKEN.into(),
    }
}

fn needles() -> Vec<&'static str> {
    let mut v = vec![SECRET, TOKEN, TOKEN_PART, WRONG_SECRET];
    v.extend(BAD_SECRETS);
    v
}

fn assert_clean(what: &str, bytes: &[u8]) {
    for n in needles() {
        assert!(
            !bytes.windows(n.len()).any(|w| w == n.as_bytes()),
            "{what} contains {n:?}"
        );
    }
}

struct Fixture {
    sim: RunningSim,
    /// A second host a redirect points at, which must never be asked.
    other: RunningSim,
    dir: tempfile::TempDir,
    db: PathBuf,
    runs: usize,
    trace_lines: usize,
}

impl Fixture {
    async fn start() -> Fixture {
        let sim = Sim::start(credentials()).await.unwrap();
        let other = Sim::start(credentials()).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("ledger.db");
        Fixture {
            sim,
            other,
            dir,
            db,
            runs: 0,
            trace_lines: 0,
        }
    }

    /// A config in the file `name`, credentials inline, the ledger at `db`.
    fn config(&self, name: &str, db: &Path) -> PathBuf {
        let config = TestConfig::new(&self.sim.base_url(), &credentials(), db).with(|c| {
            c.api.timeout = Some(Duration::from_secs(1));
            c.database.busy_timeout = Some(Duration::from_millis(100));
        });
        self.write(name, &config.to_toml())
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        chmod(&p, 0o600);
        p
    }

    /// Runs `--once` on `config` with `RUST_LOG=trace` and checks everything printed.
    fn run(&mut self, what: &str, config: &Path, env: &[(&str, &str)]) -> Finished {
        let mut cmd = TestCommand::new(self.dir.path());
        cmd.config(config).once().env("RUST_LOG", "trace");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.run();
        assert_clean(&format!("{what}: stdout"), out.stdout_bytes());
        assert_clean(&format!("{what}: stderr"), out.stderr_bytes());
        self.runs += 1;
        self.trace_lines += out.stderr().lines().filter(|l| l.contains("TRACE")).count();
        out
    }

    fn create(&self, id: &str, amount: i64) {
        Connection::open(&self.db)
            .unwrap()
            .execute(
                "INSERT INTO charges (charge_id, store_id, requested_amount) VALUES (?1, ?2, ?3)",
                rusqlite::params![id, STORE, amount],
            )
            .unwrap();
        self.sim.upsert(SimCharge::new(id, STORE, amount));
    }

    /// Makes every charge due again.
    fn all_due(&self) {
        Connection::open(&self.db)
            .unwrap()
            .execute_batch(
                "UPDATE charges SET next_check_at = '2000-01-01T00:00:00.000Z'
                 WHERE next_check_at IS NOT NULL",
            )
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn secrets_appear_nowhere_at_trace_level() {
    let mut f = Fixture::start().await;
    let cfg = f.config("config.toml", &f.db);

    // A good pass that creates the ledger, then one with transitions and a mismatch.
    let out = f.run("first pass", &cfg, &[]);
    out.assert_code(0);
    // Held open across the runs below, so their WAL stays on disk to be searched too.
    let keeper = Connection::open(&f.db).unwrap();
    keeper
        .query_row("SELECT count(*) FROM charges", [], |r| r.get::<_, i64>(0))
        .unwrap();
    for (i, amount) in [100, 200, 300, 400].into_iter().enumerate() {
        f.create(&format!("c{i}"), amount);
    }
    f.sim.update("c0", |c| {
        c.awaiting("1234-5678", Some("https://slip.example/1"))
    });
    f.sim.update("c1", SimCharge::paid);
    f.sim.update("c2", |c| c.paid_with(290, "JPY"));
    f.sim.update("c3", SimCharge::expired);
    let out = f.run("good pass", &cfg, &[]);
    out.assert_code(2);

    // The same credentials from the environment and from a secret file.
    f.all_due();
    let no_credentials = TestConfig::default().with(|c| {
        c.api.base_url = Some(f.sim.base_url());
        c.database.path = Some(f.db.clone());
    });
    let bare = f.write("from-env.toml", &no_credentials.to_toml());
    let out = f.run(
        "credentials from the environment",
        &bare,
        &[("UNIVAPAY_SECRET", SECRET), ("UNIVAPAY_APP_TOKEN", TOKEN)],
    );
    out.assert_code(0);
    f.write("secret.txt", &format!("{SECRET}\n"));
    let from_file = f.write(
        "from-file.toml",
        &no_credentials
            .clone()
            .with(|c| {
                c.api.app_token = Some(TOKEN.into());
                c.api.secret_file = Some("secret.txt".into());
            })
            .to_toml(),
    );
    f.all_due();
    let out = f.run("secret from a file", &from_file, &[]);
    out.assert_code(0);

    // Hostile answers, one pass: an error, garbage, a body past the cap, a cut connection,
    // a timeout, and a redirect to another host that accepts the same credentials.
    f.create("h-500", 100);
    f.create("h-garbage", 100);
    f.create("h-huge", 100);
    f.create("h-reset", 100);
    f.create("h-slow", 100);
    f.create("h-redirect", 100);
    f.other
        .upsert(SimCharge::new("h-redirect", STORE, 100).paid());
    f.sim.push_reply(
        "h-500",
        Reply::Raw {
            status: 500,
            body: "{}".into(),
        },
    );
    f.sim.push_reply(
        "h-garbage",
        Reply::Raw {
            status: 200,
            body: "{\"id\": 42, \"status\": [".into(),
        },
    );
    f.sim.push_reply(
        "h-huge",
        Reply::Raw {
            status: 200,
            body: "x".repeat(2 * 1024 * 1024),
        },
    );
    f.sim.push_reply("h-reset", Reply::Reset);
    f.sim
        .push_reply("h-slow", Reply::Delay(Duration::from_millis(1500)));
    f.sim.push_reply(
        "h-redirect",
        Reply::WithHeaders {
            status: 307,
            body: String::new(),
            headers: vec![(
                "Location".into(),
                format!("{}/stores/{STORE}/charges/h-redirect", f.other.base_url()),
            )],
        },
    );
    f.all_due();
    let out = f.run("hostile answers", &cfg, &[]);
    out.assert_code(0);
    assert!(out.stdout().contains("errors 6"), "{}", out.stdout());
    assert_eq!(f.other.counters().requests, 0);

    // Credentials rejected: a wrong secret, and a 401 in the middle of a pass.
    f.all_due();
    let out = f.run(
        "wrong secret",
        &cfg,
        &[
            ("UNIVAPAY_SECRET", WRONG_SECRET),
            ("UNIVAPAY_APP_TOKEN", TOKEN),
        ],
    );
    out.assert_fatal(&["credentials rejected"]);
    f.sim.push_reply(
        "c0",
        Reply::Raw {
            status: 401,
            body: r#"{"status":"error","code":"INVALID_CREDENTIALS","errors":[]}"#.into(),
        },
    );
    f.all_due();
    let out = f.run("401 mid-pass", &cfg, &[]);
    out.assert_fatal(&["credentials rejected"]);

    // Bad configs around the credentials.
    let token_only = TestConfig::default().with(|c| {
        c.api.base_url = Some(f.sim.base_url());
        c.api.app_token = Some(TOKEN.into());
    });
    let good = token_only
        .clone()
        .with(|c| c.api.secret = Some(SECRET.into()));
    // Not TOML at all, so spelled out: the line the error names is plain to see.
    let head = format!(
        "[api]\nbase_url = \"{}\"\napp_token = \"{TOKEN}\"\n",
        f.sim.base_url()
    );
    for (name, text, key) in [
        (
            "secret as a number",
            token_only
                .clone()
                .set("api.secret", BAD_SECRETS[0].parse::<i64>().unwrap())
                .to_toml(),
            "api.secret",
        ),
        (
            "secret with a space",
            token_only
                .clone()
                .with(|c| c.api.secret = Some(BAD_SECRETS[1].into()))
                .to_toml(),
            "api.secret",
        ),
        (
            "secret unquoted",
            format!("{head}secret = {}\n", BAD_SECRETS[2]),
            "line 4",
        ),
        (
            "secret under a misspelt key",
            token_only.clone().set("api.secrte", SECRET).to_toml(),
            "secrte",
        ),
        (
            "secret twice",
            format!("{head}secret = \"{SECRET}\"\nsecret = \"{SECRET}\"\n"),
            "line 5",
        ),
        (
            "token as a list",
            good.clone().set("api.app_token", vec![TOKEN]).to_toml(),
            "api.app_token",
        ),
        (
            "another key wrong beside good credentials",
            good.clone().set("api.timeout", "soon").to_toml(),
            "api.timeout",
        ),
    ] {
        let p = f.write("bad.toml", &text);
        let out = f.run(name, &p, &[]);
        out.assert_fatal(&[key]);
    }

    // Database trouble with good credentials.
    let not_sqlite = f.dir.path().join("notes.db");
    std::fs::write(&not_sqlite, "not a database\n".repeat(300)).unwrap();
    let p = f.config("not-sqlite.toml", &not_sqlite);
    let out = f.run("not a database", &p, &[]);
    out.assert_fatal(&["not a database"]);
    let p = f.config("missing-dir.toml", &f.dir.path().join("nope/ledger.db"));
    let out = f.run("missing directory", &p, &[]);
    out.assert_fatal(&["nope"]);
    keeper.execute_batch("BEGIN IMMEDIATE").unwrap();
    f.all_due_via(&keeper);
    let out = f.run("locked database", &cfg, &[]);
    out.assert_fatal(&["database is locked"]);
    keeper.execute_batch("COMMIT").unwrap();

    // The database and its WAL, as the runs left them and after a final checkpoint.
    let mut searched = 0;
    for suffix in ["", "-wal", "-shm"] {
        let p = PathBuf::from(format!("{}{suffix}", f.db.display()));
        if let Ok(bytes) = std::fs::read(&p) {
            assert_clean(&p.display().to_string(), &bytes);
            searched += bytes.len();
        }
    }
    let wal = std::fs::metadata(format!("{}-wal", f.db.display()))
        .map(|m| m.len())
        .unwrap_or(0);
    assert!(wal > 0, "the WAL was kept for searching");
    drop(keeper);
    assert_clean("database", &std::fs::read(&f.db).unwrap());
    // The ledger does hold what the passes wrote, so the search above was not of nothing.
    let db_text = String::from_utf8_lossy(&std::fs::read(&f.db).unwrap()).into_owned();
    assert!(db_text.contains("1234-5678") && db_text.contains("charged 290 JPY"));
    assert!(
        f.trace_lines > 100,
        "trace logging was on: {}",
        f.trace_lines
    );
    eprintln!(
        "secrets: {} runs, {} trace lines, {searched} database bytes searched",
        f.runs, f.trace_lines
    );
}

impl Fixture {
    fn all_due_via(&self, conn: &Connection) {
        conn.execute_batch(
            "UPDATE charges SET next_check_at = '2000-01-01T00:00:00.000Z'
             WHERE next_check_at IS NOT NULL",
        )
        .unwrap();
    }
}

#[test]
fn debug_output_of_the_settings_redacts_the_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.toml");
    TestConfig::default()
        .with(|c| {
            c.api.app_token = Some(TOKEN.into());
            c.api.secret = Some(SECRET.into());
        })
        .write(&cfg);
    // No environment: a developer's own UNIVAPAY_* must not stand in for these.
    let s = Settings::load(&cfg, &[("UNUSED", "")]).unwrap();
    for text in [format!("{s:?}"), format!("{s:#?}"), format!("{:?}", s.api)] {
        assert_clean("Debug of the settings", text.as_bytes());
        assert!(text.contains("REDACTED"), "{text}");
    }
    let client = konbini_reconciler::univapay::Client::new(&s.api).unwrap();
    assert_clean("Debug of the client", format!("{client:?}").as_bytes());
}
