//! The real binary the way systemd and operators run it: the notify protocol, signals, and
//! several processes sharing one database through the pass lock.

use std::path::Path;
use std::time::{Duration, Instant};

use konbini_reconciler::lock::PassLock;
use tokio::net::UnixDatagram;
use univapay_sim::{Reply, SimCharge};

use crate::helpers::{TestApp, assert_runs_never_overlapped, wait_until};
use crate::util::{Finished, Running};

/// The request timeout here: the harness's 2 s would turn the slow answers these tests
/// script into timeouts and race the behaviour under test.
const PATIENT: Duration = Duration::from_secs(20);

/// A tick every second.
const EVERY_SECOND: &str = "* * * * * *";

/// `--once` with the test's config, started.
fn once(app: &TestApp) -> Running {
    app.command().once().spawn()
}

/// No process ever hit SQLite's busy timeout or another database error.
fn assert_no_database_trouble(out: &Finished) {
    let err = out.stderr();
    for bad in [
        "database is locked",
        "SQLITE_BUSY",
        "DatabaseBusy",
        "panicked",
    ] {
        assert!(!err.contains(bad), "{bad}: {err}");
    }
}

/// Receives notify datagrams into `seen` until one satisfies `want`.
async fn recv_until(
    sock: &UnixDatagram,
    seen: &mut Vec<String>,
    limit: Duration,
    want: impl Fn(&str) -> bool,
) {
    let deadline = Instant::now() + limit;
    let mut buf = vec![0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let n = tokio::time::timeout(left, sock.recv(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("no matching notification within {limit:?}: {seen:#?}"))
            .unwrap();
        let msg = String::from_utf8_lossy(&buf[..n]).trim_end().to_owned();
        let hit = want(&msg);
        seen.push(msg);
        if hit {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plays_systemd_ready_status_watchdog_stopping() {
    let mut app = TestApp::spawn().await;
    // A database that does not exist yet: READY must come after it was created.
    let fresh = app.dir.path().join("fresh.db");
    app.reconfigure(|c| {
        c.api.timeout = Some(PATIENT);
        c.database.path = Some(fresh);
        c.schedule.cron = Some(EVERY_SECOND.into());
        c.schedule.run_on_start = Some(false);
        c.schedule.drain_timeout = Some(Duration::from_secs(1));
    });
    let sock_path = app.dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    let mut daemon = app
        .command()
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "300000")
        .spawn();
    let mut seen = Vec::new();

    recv_until(&sock, &mut seen, Duration::from_secs(10), |m| {
        m.lines().any(|l| l == "READY=1")
    })
    .await;
    assert_eq!(
        app.count("SELECT count(*) FROM runs"),
        0,
        "migrated at READY"
    );
    app.create("paid", 1500);
    app.sim.update("paid", SimCharge::paid);

    recv_until(&sock, &mut seen, Duration::from_secs(5), |m| {
        m.contains("STATUS=pass") && m.contains("checked 1, transitions 1")
    })
    .await;
    assert_eq!(app.row("paid").state, "successful");
    let ready_at = seen.iter().position(|m| m.contains("READY=1")).unwrap();
    let first_status = seen.iter().position(|m| m.contains("STATUS=pass")).unwrap();
    assert!(ready_at < first_status, "{seen:#?}");
    let pings = seen.iter().filter(|m| *m == "WATCHDOG=1").count();
    assert!(pings >= 2, "a keep-alive every 150 ms: {seen:#?}");

    // Shut down in the middle of a pass.
    app.create("stuck", 100);
    app.sim
        .push_reply("stuck", Reply::Delay(Duration::from_secs(30)));
    wait_until(Duration::from_secs(5), "stuck is being fetched", || {
        app.sim.requests_for("stuck") == 1
    })
    .await;
    let t = Instant::now();
    daemon.signal(libc::SIGTERM);
    recv_until(&sock, &mut seen, Duration::from_secs(5), |m| {
        m.lines().any(|l| l == "STOPPING=1")
    })
    .await;
    let out = daemon.finish(Duration::from_secs(5)).await;
    let took = t.elapsed();
    eprintln!("notify messages seen: {seen:#?}");
    out.assert_code(0);
    assert!(
        took < Duration::from_secs(3),
        "drain_timeout 1 s, took {took:?}"
    );
    assert_no_database_trouble(&out);
    let run = app.last_run();
    assert_eq!(run.outcome, "interrupted", "{run:?}");
    assert_eq!(
        app.row("stuck").last_checked_at,
        None,
        "abandoned, untouched"
    );
    assert_runs_never_overlapped(&app.runs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_once_gives_up_with_exit_3_while_a_pass_runs() {
    let mut app = TestApp::spawn().await;
    app.reconfigure(|c| {
        c.api.timeout = Some(PATIENT);
        c.schedule.lock_wait = Some(Duration::ZERO);
    });
    for i in 0..4 {
        let id = format!("c{i}");
        app.create(&id, 100);
        app.sim
            .push_reply(&id, Reply::Delay(Duration::from_millis(1000)));
    }
    let first = once(&app);
    wait_until(
        Duration::from_secs(10),
        "the first pass is fetching",
        || app.sim.counters().requests >= 1,
    )
    .await;
    let second = once(&app).finish(Duration::from_secs(5)).await;
    let first = first.finish(Duration::from_secs(10)).await;

    first.assert_code(0);
    second.assert_code(3);
    let err = second.stderr();
    assert_eq!(err.lines().count(), 1, "{err}");
    let lock = PassLock::for_database(&app.db_path);
    for part in [
        "another pass is running",
        &lock.path().display().to_string(),
        "schedule.lock_wait",
    ] {
        assert!(err.contains(part), "{part}: {err}");
    }
    assert!(second.stdout().is_empty(), "no pass, no summary");
    for i in 0..4 {
        assert_eq!(app.sim.requests_for(&format!("c{i}")), 1);
    }
    assert_eq!(app.runs().len(), 1);
    assert_no_database_trouble(&first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_once_runs_after_the_holder_and_fetches_nothing_twice() {
    let mut app = TestApp::spawn().await;
    app.reconfigure(|c| {
        c.api.timeout = Some(PATIENT);
        c.schedule.lock_wait = Some(Duration::from_secs(10));
    });
    for i in 0..4 {
        let id = format!("c{i}");
        app.create(&id, 100);
        app.sim.update(&id, SimCharge::paid);
        app.sim
            .push_reply(&id, Reply::Delay(Duration::from_millis(1200)));
    }
    let first = once(&app);
    wait_until(
        Duration::from_secs(10),
        "the first pass is fetching",
        || app.sim.counters().requests >= 1,
    )
    .await;
    let second = once(&app);
    let (first, second) = (
        first.finish(Duration::from_secs(10)).await,
        second.finish(Duration::from_secs(10)).await,
    );

    first.assert_code(0);
    second.assert_code(0);
    assert!(first.stdout().contains("checked 4"));
    assert!(second.stdout().contains("checked 0"));
    for i in 0..4 {
        assert_eq!(app.sim.requests_for(&format!("c{i}")), 1);
    }
    let runs = app.runs();
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert_runs_never_overlapped(&runs);
    assert_no_database_trouble(&first);
    assert_no_database_trouble(&second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_and_once_take_turns_on_one_database() {
    let mut app = TestApp::spawn().await;
    app.reconfigure(|c| {
        c.api.timeout = Some(PATIENT);
        c.schedule.cron = Some(EVERY_SECOND.into());
        c.schedule.run_on_start = Some(true);
        c.schedule.lock_wait = Some(Duration::ZERO);
    });
    for id in ["c0", "c1"] {
        app.create(id, 100);
        app.sim
            .push_reply(id, Reply::Delay(Duration::from_millis(1200)));
    }
    // A manual pass holds the lock when the daemon starts.
    let manual = once(&app);
    wait_until(
        Duration::from_secs(10),
        "the manual pass is fetching",
        || app.sim.counters().requests >= 1,
    )
    .await;
    let mut daemon = app.command().spawn();
    let manual = manual.finish(Duration::from_secs(10)).await;
    manual.assert_code(0);
    wait_until(Duration::from_secs(5), "the daemon's own pass", || {
        app.runs().len() >= 2
    })
    .await;

    // Now the daemon is the one mid-pass, and a manual pass must give up.
    app.create("late", 100);
    app.sim
        .push_reply("late", Reply::Delay(Duration::from_millis(2000)));
    wait_until(
        Duration::from_secs(5),
        "the daemon is fetching late",
        || app.sim.requests_for("late") == 1,
    )
    .await;
    let refused = once(&app).finish(Duration::from_secs(5)).await;
    refused.assert_code(3);
    wait_until(Duration::from_secs(5), "late was written", || {
        app.row("late").last_checked_at.is_some()
    })
    .await;

    daemon.signal(libc::SIGINT);
    let daemon = daemon.finish(Duration::from_secs(5)).await;
    let log = daemon.stderr();
    eprintln!("daemon log:\n{log}");
    assert_eq!(daemon.code(), Some(0), "{log}");
    assert!(
        log.contains("tick skipped: another process holds the pass lock"),
        "{log}"
    );
    assert!(
        log.contains("tick skipped: previous pass still running"),
        "{log}"
    );
    for id in ["c0", "c1", "late"] {
        assert_eq!(app.sim.requests_for(id), 1, "{id} fetched once");
    }
    let runs = app.runs();
    assert_eq!(runs[0].trigger, "once", "{runs:?}");
    assert!(
        runs[1..].iter().all(|r| r.trigger == "schedule"),
        "{runs:?}"
    );
    assert_runs_never_overlapped(&runs);
    assert_no_database_trouble(&daemon);
    assert_no_database_trouble(&manual);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_pass_never_blocks_the_next_and_its_run_is_closed() {
    let mut app = TestApp::spawn().await;
    app.reconfigure(|c| {
        c.api.timeout = Some(PATIENT);
        c.schedule.lock_wait = Some(Duration::ZERO);
    });
    app.create("stuck", 100);
    app.sim
        .push_reply("stuck", Reply::Delay(Duration::from_secs(30)));
    let victim = once(&app);
    wait_until(Duration::from_secs(10), "stuck is being fetched", || {
        app.sim.requests_for("stuck") == 1
    })
    .await;
    victim.kill(); // SIGKILL: no chance to clean up
    assert_eq!(
        app.last_run().outcome,
        "running",
        "left behind by the dead process"
    );

    let next = once(&app).finish(Duration::from_secs(10)).await;
    next.assert_code(0);
    let runs = app.runs();
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert_eq!(runs[0].outcome, "interrupted", "{runs:?}");
    assert!(
        runs[0]
            .detail
            .as_deref()
            .unwrap_or("")
            .contains("process ended before the pass finished"),
        "{runs:?}"
    );
    assert_eq!(runs[1].outcome, "ok", "{runs:?}");
    // The dead pass never wrote it, so it was still due and checked now.
    assert_eq!(app.sim.requests_for("stuck"), 2);
    assert!(app.row("stuck").last_checked_at.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_waits_up_to_lock_wait() {
    let mut app = TestApp::spawn().await;
    app.create("a", 100);
    let lock = PassLock::for_database(&app.db_path);
    let held = lock.try_acquire().unwrap().expect("free");

    app.reconfigure(|c| {
        c.api.timeout = Some(PATIENT);
        c.schedule.lock_wait = Some(Duration::from_millis(400));
    });
    let t = Instant::now();
    let out = once(&app).finish(Duration::from_secs(5)).await;
    out.assert_code(3);
    assert!(
        t.elapsed() >= Duration::from_millis(400),
        "{:?}",
        t.elapsed()
    );
    let err = out.stderr();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains(&format!("by pid {}", std::process::id())),
        "{err}"
    );
    assert!(
        err.contains("gave up after 400ms (schedule.lock_wait)"),
        "{err}"
    );
    assert_eq!(app.sim.requests_for("a"), 0);
    assert_eq!(app.count("SELECT count(*) FROM runs"), 0);

    // Released while the --once waits: it runs.
    app.reconfigure(|c| c.schedule.lock_wait = Some(Duration::from_secs(10)));
    let mut waiting = once(&app);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiting.has_exited(), "still waiting");
    drop(held);
    let out = waiting.finish(Duration::from_secs(5)).await;
    out.assert_code(0);
    assert_eq!(app.sim.requests_for("a"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_that_cannot_open_its_database_exits_1_without_ready() {
    let mut app = TestApp::spawn().await;
    let missing = app.dir.path().join("missing-dir").join("ledger.db");
    app.reconfigure(|c| {
        c.api.timeout = Some(PATIENT);
        c.database.path = Some(missing);
    });
    let sock_path = app.dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    let out = app
        .command()
        .env("NOTIFY_SOCKET", &sock_path)
        .spawn()
        .finish(Duration::from_secs(10))
        .await;
    out.assert_code(1);
    let err = out.stderr();
    let fatal: Vec<_> = err.lines().filter(|l| l.contains("error:")).collect();
    assert_eq!(fatal.len(), 1, "{err}");
    assert!(fatal[0].contains("missing-dir"), "{err}");
    let mut buf = [0u8; 512];
    assert!(
        sock.try_recv(&mut buf).is_err(),
        "no READY for a daemon that never ran"
    );
}

/// The unit files are checked by `.ci/run` with systemd-analyze; here only what that
/// cannot know: that they match this program's command line and config.
#[test]
fn unit_files_match_the_program() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd");
    let service = std::fs::read_to_string(dir.join("konbini-reconciler.service")).unwrap();
    let oneshot = std::fs::read_to_string(dir.join("konbini-reconciler-once.service")).unwrap();
    let timer = std::fs::read_to_string(dir.join("konbini-reconciler-once.timer")).unwrap();
    for line in [
        "Type=notify",
        "DynamicUser=yes",
        "StateDirectory=konbini-reconciler",
        "Restart=on-failure",
        "NotifyAccess=main",
    ] {
        assert!(service.lines().any(|l| l == line), "service lacks {line}");
    }
    assert!(service.lines().any(|l| l.starts_with("WatchdogSec=")));
    assert!(
        service
            .lines()
            .any(|l| l.starts_with("LoadCredential=univapay-secret:"))
    );
    for unit in [&service, &oneshot] {
        let exec = unit
            .lines()
            .find(|l| l.starts_with("ExecStart="))
            .expect("ExecStart");
        assert!(
            exec.contains("--config /etc/konbini-reconciler/config.toml"),
            "{exec}"
        );
    }
    assert!(oneshot.lines().any(|l| l == "Type=oneshot"));
    assert!(
        oneshot
            .lines()
            .find(|l| l.starts_with("ExecStart="))
            .unwrap()
            .ends_with(" --once")
    );
    // A mismatch (exit 2) must fail the oneshot unit so OnFailure= alerting fires, but
    // "another pass holds the lock" (exit 3) is not a failure of the timer run.
    assert!(oneshot.lines().any(|l| l == "SuccessExitStatus=3"));
    assert!(timer.lines().any(|l| l == "Persistent=true"));
    // The drain deadline in the shipped config stays well inside the stop timeout.
    let stop = service
        .lines()
        .find_map(|l| l.strip_prefix("TimeoutStopSec="))
        .expect("TimeoutStopSec");
    let stop = humantime::parse_duration(stop).unwrap();
    let config: toml::Table = toml::from_str(
        &std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml"))
            .unwrap(),
    )
    .unwrap();
    let drain = config["schedule"]["drain_timeout"]
        .as_str()
        .map(|v| humantime::parse_duration(v).unwrap())
        .expect("schedule.drain_timeout in config.toml");
    assert!(
        drain * 2 <= stop,
        "drain {drain:?} vs TimeoutStopSec {stop:?}"
    );
}
