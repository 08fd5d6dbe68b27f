//! The operator's commands through the real binary: exit statuses, what they print, and the
//! database before and after. Bad input never touches the database, and only `register`
//! ever creates one.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use konbini_reconciler::lock::PassLock;
use univapay_sim::{Reply, SimCharge};

use crate::helpers::{STORE, TestApp, wait_until};
use crate::util::{Finished, TestCommand};

/// The binary with the test's config, in the test's directory, with a clean environment.
fn konbini(app: &TestApp) -> TestCommand {
    app.command()
}

/// The same, with the config at `config` instead.
fn konbini_with(app: &TestApp, config: &Path) -> TestCommand {
    let mut cmd = TestCommand::new(app.dir.path());
    cmd.config(config);
    cmd
}

/// Runs `cmd` to its end; every command's stdout is UTF-8 text.
#[track_caller]
fn run(cmd: &mut TestCommand) -> Finished {
    let r = cmd.run();
    assert!(
        std::str::from_utf8(r.stdout_bytes()).is_ok(),
        "stdout is UTF-8: {:?}",
        r.stdout_bytes()
    );
    r
}

/// Exit 1 with exactly one `konbini-reconciler: error:` line on stderr, and nothing else,
/// containing `needle`.
#[track_caller]
fn assert_one_error_line(r: &Finished, needle: &str) {
    r.assert_fatal(&[needle]);
    let err = r.stderr();
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.starts_with("konbini-reconciler: error: "), "{err}");
}

/// A config like the test's, but for a database at `db` (which does not exist yet).
fn config_for(app: &TestApp, db: &Path) -> PathBuf {
    let path = app.dir.path().join("other.toml");
    app.config
        .clone()
        .with(|c| c.database.path = Some(db.to_owned()))
        .write(&path);
    path
}

/// Every file in `dir` whose name starts with `prefix`.
fn files_like(dir: &Path, prefix: &str) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(prefix))
        .collect()
}

/// The whole `charges` table as text, to compare before and after.
fn dump(app: &TestApp) -> Vec<String> {
    let db = app.db();
    let mut stmt = db
        .prepare("SELECT * FROM charges ORDER BY charge_id")
        .unwrap();
    let n = stmt.column_count();
    stmt.query_map([], |r| {
        Ok((0..n)
            .map(|i| format!("{:?}", r.get_ref(i).unwrap()))
            .collect::<Vec<_>>()
            .join("|"))
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

fn runs_count(app: &TestApp) -> i64 {
    app.count("SELECT count(*) FROM runs")
}

#[tokio::test(flavor = "multi_thread")]
async fn only_register_creates_the_database() {
    let app = TestApp::spawn().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("fresh.db");
    let config = config_for(&app, &db);
    let refusing: [&[&str]; 5] = [
        &["status"],
        &["status", "--json"],
        &["export"],
        &["check", "a"],
        &["recheck", "--unchecked"],
    ];
    for args in refusing {
        let r = run(konbini_with(&app, &config).args(args));
        assert_one_error_line(&r, "no such database");
        assert!(
            r.stderr().contains("fresh.db"),
            "names the file: {}",
            r.stderr()
        );
        assert!(r.stdout().is_empty(), "{args:?}: {}", r.stdout());
        assert_eq!(
            files_like(dir.path(), "fresh"),
            Vec::<String>::new(),
            "{args:?}"
        );
    }
    let r = run(konbini_with(&app, &config).args(["recheck", "a"]));
    assert_one_error_line(&r, "no such database");
    assert!(!db.exists());

    let r = run(konbini_with(&app, &config).args(["register", "ch-1", STORE, "1500"]));
    assert_eq!(r.code(), Some(0), "{}", r.stderr());
    assert_eq!(
        r.stdout(),
        format!("registered ch-1: store {STORE}, 1500 JPY; due now\n")
    );
    assert!(db.exists());
    let r = run(konbini_with(&app, &config).arg("status"));
    assert_eq!(r.code(), Some(0), "{}", r.stderr());
    assert!(
        r.stdout()
            .contains("pending              1            1500 JPY"),
        "{}",
        r.stdout()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn register_validates_inserts_and_is_idempotent() {
    let app = TestApp::spawn().await;
    let r = run(konbini(&app).args([
        "register",
        "ch-usd",
        STORE,
        "1000000000000",
        "--currency",
        "usd",
        "--expires-at",
        "2026-12-01T09:00:00+09:00",
    ]));
    assert_eq!(r.code(), Some(0), "{}", r.stderr());
    assert_eq!(
        r.stdout(),
        format!(
            "registered ch-usd: store {STORE}, 1000000000000 USD, expires 2026-12-01T00:00:00.000Z; due now\n"
        )
    );
    let row: (
        String,
        i64,
        String,
        Option<String>,
        String,
        String,
        Option<String>,
    ) = app
        .db()
        .query_row(
            "SELECT store_id, requested_amount, requested_currency, expires_at, state, origin,
                    next_check_at
             FROM charges WHERE charge_id = 'ch-usd'",
            [],
            |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                ))
            },
        )
        .unwrap();
    assert_eq!(
        (
            &row.0[..],
            row.1,
            &row.2[..],
            row.3.as_deref(),
            &row.4[..],
            &row.5[..]
        ),
        (
            STORE,
            1_000_000_000_000,
            "USD",
            Some("2026-12-01T00:00:00.000Z"),
            "pending",
            "registered"
        )
    );
    assert!(row.6.is_some(), "due at once");

    // The same again: nothing changes, exit 0.
    let before = dump(&app);
    for extra in [
        &["--currency", "USD"][..],
        &["--currency", "usd", "--expires-at", "2026-12-01T00:00:00Z"],
    ] {
        let r = run(konbini(&app)
            .args(["register", "ch-usd", STORE, "1000000000000"])
            .args(extra));
        assert_eq!(r.code(), Some(0), "{extra:?}: {}", r.stderr());
        assert_eq!(
            r.stdout(),
            "ch-usd is already registered with these values; nothing changed\n"
        );
    }
    assert_eq!(dump(&app), before);

    // Other values: refused, naming what is registered; nothing changes.
    for (args, needle) in [
        (vec!["ch-usd", STORE, "999"], "amount 1000000000000 USD"),
        (
            vec![
                "ch-usd",
                "other-store",
                "1000000000000",
                "--currency",
                "USD",
            ],
            "store_id",
        ),
        (
            vec!["ch-usd", STORE, "1000000000000"],
            "amount 1000000000000 USD",
        ),
        (
            vec![
                "ch-usd",
                STORE,
                "1000000000000",
                "--currency",
                "USD",
                "--expires-at",
                "2026-12-02T00:00:00Z",
            ],
            "expires_at 2026-12-01T00:00:00.000Z",
        ),
    ] {
        let r = run(konbini(&app).arg("register").args(&args));
        assert_one_error_line(&r, needle);
        assert!(
            r.stderr().contains("already registered with other values"),
            "{}",
            r.stderr()
        );
        assert!(r.stdout().is_empty());
    }
    assert_eq!(dump(&app), before);

    // What the schema would refuse is refused before the database is opened.
    for (args, needle) in [
        (vec!["bad/id", STORE, "1"], "'<CHARGE_ID>'"),
        (vec!["..", STORE, "1"], "'<CHARGE_ID>'"),
        (vec!["a b", STORE, "1"], "'<CHARGE_ID>'"),
        (vec!["", STORE, "1"], "'<CHARGE_ID>'"),
        (vec!["ok", "st?re", "1"], "'<STORE_ID>'"),
        (vec!["ok", STORE, "-1"], "'<AMOUNT>'"),
        (vec!["ok", STORE, "1000000000001"], "'<AMOUNT>'"),
        (vec!["ok", STORE, "12.5"], "'<AMOUNT>'"),
        (vec!["ok", STORE, "1e3"], "'<AMOUNT>'"),
        (vec!["ok", STORE, "ten"], "'<AMOUNT>'"),
        (
            vec!["ok", STORE, "1", "--currency", "YENS"],
            "'--currency <CUR>'",
        ),
        (
            vec!["ok", STORE, "1", "--currency", "¥¥¥"],
            "'--currency <CUR>'",
        ),
        (
            vec!["ok", STORE, "1", "--expires-at", "2026-12-01"],
            "'--expires-at <RFC3339>'",
        ),
        (vec!["ok", STORE], "<AMOUNT>"),
        (vec!["ok", STORE, "1", "extra"], "unexpected argument"),
        (
            vec!["ok", STORE, "1", "--bogus"],
            "unexpected argument '--bogus'",
        ),
    ] {
        let r = run(konbini(&app).arg("register").args(&args));
        assert_one_error_line(&r, needle);
    }
    assert_eq!(dump(&app), before);
}

#[tokio::test(flavor = "multi_thread")]
async fn status_shows_states_amounts_problems_and_the_last_run() {
    let app = TestApp::spawn().await;
    // Before any run.
    let r = run(konbini(&app).args(["status", "--json"]));
    assert_eq!(r.code(), Some(0), "{}", r.stderr());
    let j: serde_json::Value = serde_json::from_str(&r.stdout()).unwrap();
    assert_eq!(j["last_run"], serde_json::Value::Null);
    assert_eq!(j["charges"]["pending"]["count"], 0);

    app.create("paid", 1500);
    app.sim.update("paid", SimCharge::paid);
    app.create("short", 1000);
    app.sim.update("short", |c| c.paid_with(900, "JPY"));
    app.create("waiting", 700);
    app.sim.update("waiting", |c| c.awaiting("7012-3456", None));
    app.create("gone", 300);
    app.sim.remove("gone");
    app.pass().await;
    app.register("later", 200);
    // "gone" given up (as after repeated 404s), "later" not due, "late" past its deadline.
    app.db()
        .execute_batch(
            "UPDATE charges SET next_check_at = NULL, last_error = 'not found' WHERE charge_id = 'gone';
             UPDATE charges SET next_check_at = '2999-01-01T00:00:00Z' WHERE charge_id = 'later';
             INSERT INTO charges (charge_id, store_id, requested_amount, requested_currency, expires_at)
                 VALUES ('late', 's', 5, 'USD', '2000-01-01T00:00:00Z');",
        )
        .unwrap();
    let last_run: i64 = app.count("SELECT max(id) FROM runs");

    let r = run(konbini(&app).arg("status"));
    assert_eq!(r.code(), Some(0), "{}", r.stderr());
    for line in r.stdout().lines() {
        assert!(line.chars().count() <= 80, "wider than 80: {line:?}");
    }
    for want in [
        "state          charges       requested",
        "pending              3             500 JPY",
        "                                     5 USD",
        "awaiting             1             700 JPY",
        "successful           2            2500 JPY",
        "failed               0",
        "total                6",
        "amount mismatches                        1",
        "unchecked (no longer checked)            1",
        "due now                                  1",
        "open past expires_at                     1",
        "open, last check failed                  1",
        &format!("last run    #{last_run} once ok at "),
        "            checked 4, transitions 3, mismatches 1, errors 1",
    ] {
        assert!(
            r.stdout().contains(want),
            "missing {want:?} in\n{}",
            r.stdout()
        );
    }

    let r = run(konbini(&app).args(["status", "--json"]));
    assert_eq!(r.code(), Some(0), "{}", r.stderr());
    assert_eq!(r.stdout().lines().count(), 1, "one object: {}", r.stdout());
    let j: serde_json::Value = serde_json::from_str(&r.stdout()).unwrap();
    assert_eq!(j["charges"]["pending"]["count"], 3);
    assert_eq!(j["charges"]["pending"]["requested_amount"], 505);
    assert_eq!(j["charges"]["pending"]["requested_by_currency"]["USD"], 5);
    assert_eq!(j["charges"]["successful"]["requested_amount"], 2500);
    assert_eq!(j["charges"]["failed"]["count"], 0);
    assert_eq!(j["mismatches"], 1);
    assert_eq!(j["unchecked"], 1);
    assert_eq!(j["due"], 1);
    assert_eq!(j["last_run"]["id"], last_run);
    assert_eq!(j["last_run"]["trigger"], "once");
    assert_eq!(j["last_run"]["outcome"], "ok");
    assert_eq!(j["last_run"]["checked"], 4);
    assert_eq!(j["last_failure"], serde_json::Value::Null);
    assert!(r.stderr().is_empty(), "{}", r.stderr());
}

#[tokio::test(flavor = "multi_thread")]
async fn check_prints_a_line_per_charge_and_exits_like_once() {
    let app = TestApp::spawn().await;
    app.create("paid", 1500);
    app.sim
        .update("paid", |c| c.awaiting("7012-3456", None).paid());
    app.create("short", 1000);
    app.sim.update("short", |c| c.paid_with(900, "JPY"));
    app.create("untouched", 50);
    let untouched_before = app.row("untouched");
    let runs_before = runs_count(&app);

    let r = run(konbini(&app).args(["check", "paid", "short", "paid"]));
    assert_eq!(r.code(), Some(2), "a new mismatch: {}", r.stderr());
    let stdout = r.stdout();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        [
            "paid: pending -> successful, UnivaPay status successful, requested 1500 JPY, \
             charged 1500 JPY, payment number 7012-3456",
            "short: pending -> successful, UnivaPay status successful, requested 1000 JPY, \
             charged 900 JPY, NEW MISMATCH: charged 900 JPY, requested 1000 JPY",
        ],
        "one line per charge, duplicates once"
    );
    assert_eq!(app.row("paid").state, "successful");
    assert_eq!(app.row("short").amount_mismatch, 1);
    assert_eq!(
        app.row("untouched"),
        untouched_before,
        "only the named ones"
    );
    assert_eq!(app.sim.requests_for("untouched"), 0);
    let last = app.last_run();
    assert_eq!(
        (
            &last.trigger[..],
            &last.outcome[..],
            last.checked,
            last.transitions,
            last.mismatches,
            last.errors
        ),
        ("check", "ok", 2, 2, 1, 0),
        "{last:?}"
    );
    assert_eq!(runs_count(&app), runs_before + 1);

    // Again: final charges are checked once more, nothing is news: exit 0.
    let r = run(konbini(&app).args(["check", "short"]));
    assert_eq!(r.code(), Some(0), "{}", r.stderr());
    assert!(
        r.stdout()
            .starts_with("short: successful (unchanged), UnivaPay status successful"),
        "{}",
        r.stdout()
    );
    assert!(
        r.stdout().contains("mismatch (flagged before)"),
        "{}",
        r.stdout()
    );

    // A failed check is a line with the error, and the charge is due again later.
    app.sim.push_reply(
        "untouched",
        Reply::Raw {
            status: 503,
            body: "{}".into(),
        },
    );
    let r = run(konbini(&app).args(["check", "untouched"]));
    assert_eq!(r.code(), Some(0), "{}", r.stderr());
    assert_eq!(
        r.stdout(),
        "untouched: pending (unchanged), requested 50 JPY, charged -, error: UnivaPay server error 503\n"
    );
    assert_eq!(
        app.row("untouched").last_error.as_deref(),
        Some("UnivaPay server error 503")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn check_refuses_unknown_ids_before_any_request() {
    let app = TestApp::spawn().await;
    app.create("known", 100);
    let before = dump(&app);
    let r = run(konbini(&app).args(["check", "known", "nope", "nada"]));
    assert_one_error_line(&r, "not in the ledger: nope, nada; nothing checked");
    assert!(r.stdout().is_empty());
    assert_eq!(app.sim.counters().requests, 0, "no request at all");
    assert_eq!(dump(&app), before);
    assert_eq!(runs_count(&app), 0, "no run begun");
    for args in [
        &["check"][..],
        &["check", "a/b"],
        &["check", "--bogus", "a"],
    ] {
        let r = run(konbini(&app).args(args));
        assert_one_error_line(&r, "");
        assert_ne!(r.code(), Some(2));
    }
    let r = run(konbini(&app).arg("check"));
    assert!(
        r.stderr()
            .contains("usage: konbini-reconciler check <CHARGE_ID>..."),
        "{}",
        r.stderr()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn check_obeys_the_pass_lock_with_exit_3() {
    let app = TestApp::spawn().await;
    app.create("a", 100);
    let held = PassLock::for_database(&app.db_path)
        .try_acquire()
        .unwrap()
        .unwrap();
    let before = dump(&app);
    let r = run(konbini(&app).args(["check", "a"]));
    assert_eq!(r.code(), Some(3), "{}", r.stderr());
    assert_eq!(r.stderr().lines().count(), 1, "{}", r.stderr());
    assert!(
        r.stderr().contains("another pass is running"),
        "{}",
        r.stderr()
    );
    assert!(r.stderr().contains("schedule.lock_wait"), "{}", r.stderr());
    assert_eq!(app.sim.counters().requests, 0);
    assert_eq!(dump(&app), before);
    assert_eq!(runs_count(&app), 0);
    drop(held);
    let r = run(konbini(&app).args(["check", "a"]));
    assert_eq!(r.code(), Some(0), "{}", r.stderr());
}

#[tokio::test(flavor = "multi_thread")]
async fn check_with_rejected_credentials_is_fatal() {
    let app = TestApp::spawn().await;
    app.create("a", 100);
    app.create("b", 100);
    let r = run(konbini(&app)
        .env("UNIVAPAY_SECRET", "wrong-secret")
        .args(["check", "a", "b"]));
    assert_eq!(r.code(), Some(1), "{}", r.stderr());
    assert!(
        r.stderr().contains("credentials rejected"),
        "{}",
        r.stderr()
    );
    assert!(!r.stderr().contains("wrong-secret"));
    assert!(
        r.stdout().contains("not checked (credentials rejected)"),
        "{}",
        r.stdout()
    );
    let outcome: String = app
        .db()
        .query_row("SELECT outcome FROM runs", [], |r| r.get(0))
        .unwrap();
    assert_eq!(outcome, "auth_failed");
    assert_eq!(app.row("a").last_checked_at, None);
}

/// UnivaPay asking for a pause far longer than a pass waits (a `Retry-After` of years,
/// taken as the 1 h cap) does not make `check` sleep through it holding the pass lock: the
/// charge that met the 429 gets its error line, the one after it is reported not checked
/// and left as it was, and the exit status is `--once`'s for a rate-limited pass, 4, with
/// the pause named on stderr.
#[tokio::test(flavor = "multi_thread")]
async fn check_stopped_by_a_long_pause_reports_the_rest_not_checked_and_exits_4() {
    // One at a time, so that the second charge is asked for only after the 429.
    let app = TestApp::spawn_with(|c| c.api.concurrency = Some(1)).await;
    app.create("first", 100);
    app.create("second", 100);
    let second_before = app.row("second");
    app.sim.push_reply(
        "first",
        Reply::WithHeaders {
            status: 429,
            body: String::new(),
            headers: vec![("Retry-After".into(), "999999999".into())],
        },
    );
    // Far less than the hour of the pause: the command must not wait it out.
    let r = konbini(&app)
        .args(["check", "first", "second"])
        .spawn()
        .finish(Duration::from_secs(60))
        .await;
    r.assert_code(4);
    assert_eq!(
        r.stdout(),
        "first: pending (unchanged), requested 100 JPY, charged -, error: rate limited by \
         UnivaPay (429)\n\
         second: not checked (UnivaPay asked for a pause)\n"
    );
    let err = r.stderr();
    let own: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("konbini-reconciler: "))
        .collect();
    assert_eq!(own.len(), 1, "{err}");
    assert!(
        own[0].contains("pause of 1h (429)") && own[0].contains("schedule.drain_timeout"),
        "{err}"
    );
    assert!(!own[0].contains("error:"), "not fatal: {err}");
    assert_eq!(
        app.sim.requests_for("second"),
        0,
        "nothing sent after the 429"
    );
    assert_eq!(
        app.row("second"),
        second_before,
        "left as it was, still due"
    );
    assert_eq!(
        app.row("first").last_error.as_deref(),
        Some("rate limited by UnivaPay (429)")
    );
    let last = app.last_run();
    assert_eq!(
        (
            &last.trigger[..],
            &last.outcome[..],
            last.checked,
            last.errors
        ),
        ("check", "rate_limited", 1, 1),
        "{last:?}"
    );
    // The pause is recorded, and binds what comes next: neither a pass nor another check
    // sends a request before it ends.
    assert!(last.resume_at.is_some(), "resume_at recorded: {last:?}");
    let sent = app.sim.counters().requests;
    konbini(&app).once().run().assert_code(4);
    let again = konbini(&app).args(["check", "second"]).run();
    again.assert_code(4);
    assert_eq!(
        again.stdout(),
        "second: not checked (UnivaPay asked for a pause)\n"
    );
    assert_eq!(
        app.sim.counters().requests,
        sent,
        "nothing sent during the pause"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn recheck_makes_open_charges_due_and_never_reopens_final_ones() {
    let app = TestApp::spawn().await;
    app.create("open", 100);
    app.create("done", 100);
    app.sim.update("done", SimCharge::paid);
    app.create("gone", 100);
    app.pass().await;
    app.db()
        .execute_batch(
            "UPDATE charges SET next_check_at = NULL, last_error = 'not found' WHERE charge_id = 'gone';",
        )
        .unwrap();
    let open_was = app.row("open").next_check_at.unwrap();
    assert!(open_was.as_str() > "2000", "{open_was}");

    // An unknown id: nothing changes at all.
    let before = dump(&app);
    let r = run(konbini(&app).args(["recheck", "open", "nope"]));
    assert_one_error_line(&r, "not in the ledger: nope; nothing changed");
    assert_eq!(dump(&app), before);

    let r = run(konbini(&app).args(["recheck", "open", "done"]));
    assert_eq!(r.code(), Some(0), "{}", r.stderr());
    assert_eq!(
        r.stdout(),
        format!("open: due now (was due {open_was})\ndone: successful is final; not reopened\n")
    );
    assert!(app.row("open").next_check_at.unwrap() < open_was);
    assert_eq!(app.row("done").next_check_at, None);
    assert_eq!(app.row("done").state, "successful");
    assert_eq!(
        app.row("gone").next_check_at,
        None,
        "not named, not touched"
    );

    let r = run(konbini(&app).args(["recheck", "--unchecked"]));
    assert_eq!(r.code(), Some(0), "{}", r.stderr());
    assert_eq!(r.stdout(), "gone: due now (was no longer checked)\n");
    assert!(app.row("gone").next_check_at.is_some());
    assert_eq!(app.row("done").next_check_at, None);
    let r = run(konbini(&app).args(["recheck", "--unchecked"]));
    assert_eq!(r.stdout(), "no charge is unchecked; nothing changed\n");

    // Due now means the next pass checks them.
    app.after_recheck();
    let requests = app.sim.requests_for("gone");
    app.pass().await;
    assert_eq!(app.sim.requests_for("gone"), requests + 1);

    for args in [
        &["recheck"][..],
        &["recheck", "--unchecked", "open"],
        &["recheck", "x y"],
    ] {
        let r = run(konbini(&app).args(args));
        assert_one_error_line(&r, "");
    }
}

/// Parses CSV text into records (the header included).
fn records(csv_text: &str) -> Vec<Vec<String>> {
    csv::ReaderBuilder::new()
        .has_headers(false)
        .from_reader(csv_text.as_bytes())
        .records()
        .map(|r| r.unwrap().iter().map(str::to_owned).collect())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn export_writes_rfc_4180_csv() {
    let app = TestApp::spawn().await;
    // An empty ledger: the header alone.
    let r = run(konbini(&app).arg("export"));
    assert_eq!(r.code(), Some(0), "{}", r.stderr());
    let header = "charge_id,store_id,origin,state,provider_status,requested_amount,\
                  requested_currency,charged_amount,charged_currency,amount_mismatch,\
                  mismatch_detail,payment_number,konbini,expires_at,created_at,updated_at,\
                  order_ref,paid_at\r\n";
    assert_eq!(r.stdout(), header);

    app.create("short", 1000);
    app.sim.update("short", |c| c.paid_with(900, "JPY"));
    app.create("plain", 12345);
    app.pass().await;
    let tricky = "charged 900 JPY, \"requested\" 1000\nper the shop, ブランド";
    app.db()
        .execute(
            "UPDATE charges SET mismatch_detail = ?1, payment_number = 'a,b', konbini = 'seven_eleven',
                    updated_at = '2026-03-01T00:00:00.000Z'
             WHERE charge_id = 'short'",
            [tricky],
        )
        .unwrap();
    app.db()
        .execute(
            "UPDATE charges SET updated_at = '2026-02-01T00:00:00.000Z' WHERE charge_id = 'plain'",
            [],
        )
        .unwrap();

    let r = run(konbini(&app).arg("export"));
    assert_eq!(r.code(), Some(0), "{}", r.stderr());
    assert!(r.stdout().starts_with(header), "{}", r.stdout());
    // Quoted where needed, quotes doubled, the newline kept inside the quotes.
    assert!(
        r.stdout().contains(
            "\"charged 900 JPY, \"\"requested\"\" 1000\nper the shop, ブランド\",\"a,b\",seven_eleven,"
        ),
        "{}",
        r.stdout()
    );
    let rows = records(&r.stdout());
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[1][0], "plain", "updated_at order");
    assert_eq!(rows[2][0], "short");
    let col = |name: &str| rows[0].iter().position(|c| c == name).unwrap();
    assert_eq!(rows[2][col("mismatch_detail")], tricky);
    assert_eq!(rows[2][col("payment_number")], "a,b");
    assert_eq!(rows[2][col("requested_amount")], "1000");
    assert_eq!(rows[2][col("charged_amount")], "900");
    assert_eq!(rows[2][col("amount_mismatch")], "1");
    assert_eq!(rows[2][col("state")], "successful");
    assert_eq!(rows[1][col("requested_amount")], "12345");
    assert_eq!(rows[1][col("charged_amount")], "", "NULL is empty");
    assert_eq!(rows[1][col("origin")], "registered");
    assert_eq!(rows[1][col("updated_at")], "2026-02-01T00:00:00.000Z");

    // Filters: state, and updated_at from --since (inclusive) to --until (exclusive).
    let ids = |args: &[&str]| -> Vec<String> {
        let r = run(konbini(&app).arg("export").args(args));
        assert_eq!(r.code(), Some(0), "{args:?}: {}", r.stderr());
        records(&r.stdout())
            .into_iter()
            .skip(1)
            .map(|r| r[0].clone())
            .collect()
    };
    assert_eq!(ids(&["--state", "successful"]), ["short"]);
    assert_eq!(ids(&["--state", "pending"]), ["plain"]);
    assert_eq!(ids(&["--state", "failed"]), Vec::<String>::new());
    assert_eq!(ids(&["--since", "2026-03-01T00:00:00Z"]), ["short"]);
    assert_eq!(ids(&["--since", "2026-03-01T09:00:00+09:00"]), ["short"]);
    assert_eq!(ids(&["--until", "2026-03-01T00:00:00Z"]), ["plain"]);
    assert_eq!(
        ids(&[
            "--since",
            "2026-01-01T00:00:00Z",
            "--until",
            "2026-12-31T00:00:00Z",
            "--state",
            "pending"
        ]),
        ["plain"]
    );

    for (args, needle) in [
        (&["--since", "2026-03-01"][..], "'--since <RFC3339>'"),
        (&["--since", "yesterday"], "'--since <RFC3339>'"),
        (&["--until", "2026-03-01 00:00:00"], "'--until <RFC3339>'"),
        (&["--state", "paid"], "'--state <STATE>'"),
        (&["--bogus"], "unexpected argument '--bogus'"),
        (&["--since"], "--since"),
    ] {
        let r = run(konbini(&app).arg("export").args(args));
        assert_one_error_line(&r, needle);
        assert!(r.stdout().is_empty());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn usage_errors_exit_1_with_the_usage_line() {
    let app = TestApp::spawn().await;
    for (args, usage) in [
        (
            &["status", "--bogus"][..],
            "usage: konbini-reconciler status [OPTIONS]",
        ),
        (&["register", "a"], "usage: konbini-reconciler register"),
        (
            &["recheck"],
            "usage: konbini-reconciler recheck <--unchecked|CHARGE_ID",
        ),
        (
            &["export", "surplus"],
            "usage: konbini-reconciler export [OPTIONS]",
        ),
        (&["nonsense"], "unrecognized subcommand 'nonsense'"),
        (
            &["--once", "status"],
            "--once cannot be used with a command",
        ),
        (&["status", "--once"], "unexpected argument '--once'"),
        (&["--bogus"], "usage: konbini-reconciler"),
    ] {
        let r = run(konbini(&app).args(args));
        assert_one_error_line(&r, usage);
    }
    let r = run(konbini(&app).args(["status", "--help"]));
    assert_eq!(r.code(), Some(0));
    assert!(r.stdout().contains("--json"), "{}", r.stdout());
    // --config also after the command.
    let r = run(TestCommand::new(app.dir.path())
        .args(["status", "--config"])
        .arg(&app.config_path));
    assert_eq!(r.code(), Some(0), "{}", r.stderr());
}

/// Every command, many times, while the daemon runs passes every second over the same
/// database: each does its job (WAL readers, short write transactions, `check` waiting
/// for the pass lock), and neither side ever meets "database is locked".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_commands_run_beside_the_daemon() {
    let mut app = TestApp::spawn().await;
    app.reconfigure(|c| {
        c.api.timeout = Some(Duration::from_secs(20));
        c.schedule.cron = Some("* * * * * *".into());
        c.schedule.run_on_start = Some(true);
        c.schedule.lock_wait = Some(Duration::from_secs(20));
        c.reconcile.recheck_interval = Some(Duration::from_secs(1));
    });
    app.sim.configure(|c| c.latency = Duration::from_millis(2));
    let mut db = app.db();
    let tx = db.transaction().unwrap();
    for i in 0..200 {
        let id = format!("c{i}");
        tx.execute(
            "INSERT INTO charges (charge_id, store_id, requested_amount) VALUES (?1, ?2, ?3)",
            rusqlite::params![id, STORE, 100 + i],
        )
        .unwrap();
        app.sim.upsert(SimCharge::new(&id, STORE, 100 + i));
    }
    tx.commit().unwrap();
    let mut daemon = konbini(&app).spawn();
    // Generous: on a loaded machine the daemon's start and first pass can be slow.
    wait_until(Duration::from_secs(60), "a first pass", || {
        runs_count(&app) > 0
    })
    .await;

    let started = Instant::now();
    let mut rounds = 0;
    let passes = || app.count("SELECT count(*) FROM runs WHERE trigger = 'schedule'");
    // At least three rounds, and on until the daemon has run passes in between (on a
    // loaded machine a round can outlast several ticks, each skipped while `check` holds
    // the lock).
    while rounds < 3 || (passes() < 3 && started.elapsed() < Duration::from_secs(60)) {
        let id = format!("new{rounds}");
        let steps: Vec<(Vec<String>, i32)> = vec![
            (vec!["status".into(), "--json".into()], 0),
            (
                vec!["register".into(), id.clone(), STORE.into(), "500".into()],
                0,
            ),
            (vec!["recheck".into(), "c1".into(), id.clone()], 0),
            (vec!["check".into(), "c2".into(), "c3".into()], 0),
            (vec!["export".into()], 0),
        ];
        for (args, want) in steps {
            let mut cmd = konbini(&app);
            cmd.args(&args);
            let r = tokio::task::spawn_blocking(move || run(&mut cmd))
                .await
                .unwrap();
            assert_eq!(r.code(), Some(want), "{args:?}: {}", r.stderr());
            assert!(
                !r.stderr().contains("database is locked"),
                "{args:?}: {}",
                r.stderr()
            );
            if args[0] == "export" {
                assert!(records(&r.stdout()).len() > 200, "every charge exported");
            }
        }
        rounds += 1;
    }
    let passes = passes();
    let checks = app.count("SELECT count(*) FROM runs WHERE trigger = 'check'");
    assert!(passes >= 3, "the daemon kept running passes: {passes}");
    assert_eq!(checks, rounds);

    daemon.signal(libc::SIGTERM);
    let out = daemon.finish(Duration::from_secs(30)).await;
    let err = out.stderr();
    assert_eq!(out.code(), Some(0), "{err}");
    for bad in ["database is locked", "DatabaseBusy", "panicked", "ERROR"] {
        assert!(!err.contains(bad), "{bad}: {err}");
    }
}

/// The systemd side of running the commands, as far as a machine without systemd as PID 1
/// allows: `systemd-analyze verify` accepts a unit with exactly the properties and command
/// line of `contrib/konbini-reconciler-ctl`, and both shipped units with the metrics
/// drop-in. Skipped when systemd-analyze is not installed.
#[test]
fn the_systemd_wrapper_and_the_metrics_drop_in_verify() {
    let Some(analyze) = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join("systemd-analyze"))
        .find(|p| p.is_file())
    else {
        eprintln!("skipped: systemd-analyze not installed");
        return;
    };
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let bin = env!("CARGO_BIN_EXE_konbini-reconciler");
    let script = std::fs::read_to_string(repo.join("contrib/konbini-reconciler-ctl")).unwrap();
    let properties: Vec<&str> = script
        .lines()
        .filter_map(|l| l.trim().strip_prefix("--property="))
        .map(|p| p.trim_end_matches(" \\"))
        .collect();
    assert!(properties.contains(&"DynamicUser=yes"), "{properties:?}");
    assert!(
        properties.contains(&"User=konbini-reconciler"),
        "the same dynamic user as the units"
    );
    let command = script
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("/usr/local/bin/konbini-reconciler "))
        .expect("the command line");
    assert!(command.ends_with("\"$@\""), "{command}");
    let units = tempfile::tempdir().unwrap();
    let mut unit = String::from("[Service]\nType=exec\n");
    for p in &properties {
        unit.push_str(p);
        unit.push('\n');
    }
    unit.push_str(&format!(
        "ExecStart={}\n",
        command
            .replace("/usr/local/bin/konbini-reconciler", bin)
            .replace("\"$@\"", "status")
    ));
    std::fs::write(units.path().join("konbini-reconciler-ctl.service"), unit).unwrap();
    let drop_in =
        std::fs::read_to_string(repo.join("monitoring/konbini-reconciler-metrics.conf")).unwrap();
    for name in [
        "konbini-reconciler.service",
        "konbini-reconciler-once.service",
    ] {
        let text = std::fs::read_to_string(repo.join("systemd").join(name)).unwrap();
        std::fs::write(
            units.path().join(name),
            text.replace("/usr/local/bin/konbini-reconciler", bin),
        )
        .unwrap();
        let d = units.path().join(format!("{name}.d"));
        std::fs::create_dir(&d).unwrap();
        std::fs::write(d.join("metrics.conf"), &drop_in).unwrap();
    }
    // The shipped units name the timer; give verify one so it need not look elsewhere.
    std::fs::copy(
        repo.join("systemd/konbini-reconciler-once.timer"),
        units.path().join("konbini-reconciler-once.timer"),
    )
    .unwrap();
    let out = std::process::Command::new(analyze)
        .env("SYSTEMD_UNIT_PATH", format!("{}:", units.path().display()))
        .arg("verify")
        .args(
            [
                "konbini-reconciler-ctl.service",
                "konbini-reconciler.service",
                "konbini-reconciler-once.service",
            ]
            .map(|n| units.path().join(n)),
        )
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.is_empty(),
        "systemd-analyze: {said}"
    );
}
