//! The metrics: the `[metrics] textfile` the real binary and the daemon write after every
//! pass, read back by a Prometheus text parser (and, when installed, by `promtool` and
//! node_exporter's own textfile collector); and the shipped alert rules and dashboard,
//! which must parse and must name only metrics that exist.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use konbini_reconciler::ledger::{Figures, Overview, RunRow, StateTotal};
use konbini_reconciler::metrics::{Snapshot, render};
use konbini_reconciler::univapay::ClientStats;
use prometheus_parse::{Scrape, Value};
use univapay_sim::SimCharge;

use crate::config::TestConfig;
use crate::helpers::{TestApp, wait_until};
use crate::util::Finished;

/// Points the test's config at a textfile in `metrics/` of its directory.
fn with_textfile(app: &mut TestApp) -> PathBuf {
    let dir = app.dir.path().join("metrics");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("konbini_reconciler.prom");
    app.reconfigure(|c| set_textfile(c, &path));
    path
}

/// `metrics.textfile = path` in `c` (a key without a typed field).
fn set_textfile(c: &mut TestConfig, path: &Path) {
    *c = std::mem::take(c).set("metrics.textfile", path.to_str().unwrap());
}

/// `--once` through the real binary under a strict umask, as under systemd (`UMask=0077`).
fn once(app: &TestApp, env: &[(&str, &str)]) -> Finished {
    let mut cmd = app.command();
    cmd.once().umask(0o077);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.run()
}

fn parse(text: &str) -> Scrape {
    Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("Prometheus text parses")
}

/// The value of the one sample of `name` with exactly these `labels`.
#[track_caller]
fn value(s: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<&prometheus_parse::Sample> = s
        .samples
        .iter()
        .filter(|x| {
            x.metric == name
                && x.labels.len() == labels.len()
                && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v))
        })
        .collect();
    assert_eq!(found.len(), 1, "{name} {labels:?}: {found:?}");
    match found[0].value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
        ref other => panic!("{name}: {other:?}"),
    }
}

fn is_counter(s: &Scrape, name: &str) -> bool {
    s.samples
        .iter()
        .filter(|x| x.metric == name)
        .all(|x| matches!(x.value, Value::Counter(_)))
}

fn now_s() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// A tool from the machine, or `None` with a note that its check is skipped (CI does not
/// depend on it; `apt-get install prometheus prometheus-node-exporter` provides both).
fn tool(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        for n in names {
            let p = dir.join(n);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    eprintln!("skipped: {} not installed", names.join(" / "));
    None
}

/// `promtool check metrics` on `text`: the Go parser and Prometheus's naming lints.
fn promtool_accepts_metrics(text: &str) {
    let Some(promtool) = tool(&["promtool"]) else {
        return;
    };
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool: {} {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn once_writes_a_textfile_prometheus_can_read() {
    let mut app = TestApp::spawn().await;
    let textfile = with_textfile(&mut app);
    app.create("paid", 1500);
    app.sim.update("paid", SimCharge::paid);
    app.create("short", 1000);
    app.sim.update("short", |c| c.paid_with(900, "JPY"));
    app.create("waiting", 700);
    app.sim.update("waiting", |c| c.awaiting("7012-3456", None));
    app.create("gone", 300);
    app.sim.remove("gone");
    app.register("given-up", 50);
    app.db()
        .execute(
            "UPDATE charges SET next_check_at = NULL WHERE charge_id = 'given-up'",
            [],
        )
        .unwrap();

    let started = now_s();
    once(&app, &[]).assert_code(2);
    let text = std::fs::read_to_string(&textfile).unwrap();
    let mode = std::fs::metadata(&textfile).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o644, "readable by the collector despite UMask=0077");
    let names: Vec<String> = std::fs::read_dir(textfile.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["konbini_reconciler.prom"], "no temporary file left");

    let s = parse(&text);
    let state = |st: &str| value(&s, "konbini_charges", &[("state", st)]);
    assert_eq!(
        (
            state("pending"),
            state("awaiting"),
            state("successful"),
            state("failed")
        ),
        (2.0, 1.0, 2.0, 0.0)
    );
    assert_eq!(
        value(
            &s,
            "konbini_charges_requested_amount",
            &[("state", "successful"), ("currency", "JPY")]
        ),
        2500.0
    );
    assert_eq!(value(&s, "konbini_mismatches", &[]), 1.0);
    assert_eq!(value(&s, "konbini_unchecked", &[]), 1.0);
    assert_eq!(value(&s, "konbini_due", &[]), 0.0);
    assert_eq!(value(&s, "konbini_open_with_errors", &[]), 1.0);
    assert_eq!(value(&s, "konbini_last_pass_new_mismatches", &[]), 1.0);
    assert_eq!(value(&s, "konbini_last_pass_checked", &[]), 4.0);
    assert_eq!(
        value(&s, "konbini_last_pass_outcome", &[("outcome", "ok")]),
        1.0
    );
    assert_eq!(
        value(
            &s,
            "konbini_last_pass_outcome",
            &[("outcome", "not_found_wall")]
        ),
        0.0
    );
    let at = value(&s, "konbini_last_pass_timestamp_seconds", &[]);
    assert!(
        at >= started - 1.0 && at <= now_s() + 1.0,
        "{at} vs {started}"
    );
    let took = value(&s, "konbini_pass_duration_seconds", &[]);
    assert!((0.0..30.0).contains(&took), "{took}");
    assert_eq!(
        value(&s, "konbini_api_requests_total", &[("result", "ok")]),
        3.0
    );
    assert_eq!(
        value(&s, "konbini_api_requests_total", &[("result", "not_found")]),
        1.0
    );
    assert_eq!(
        value(
            &s,
            "konbini_api_requests_total",
            &[("result", "rate_limited")]
        ),
        0.0
    );
    assert!(is_counter(&s, "konbini_api_requests_total"), "{text}");
    assert!(value(&s, "konbini_rate_limit_remaining", &[]) > 0.0);
    assert!(value(&s, "konbini_rate_limit_per_minute", &[]) > 0.0);
    assert_eq!(value(&s, "konbini_budget_share", &[]), 0.5);
    // The first request probes the budget; the others wait for its answer.
    assert!(value(&s, "konbini_pacer_waits_total", &[]) <= 3.0);
    assert!(is_counter(&s, "konbini_pacer_wait_seconds_total"));
    promtool_accepts_metrics(&text);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_pass_shows_in_the_textfile() {
    let mut app = TestApp::spawn().await;
    let textfile = with_textfile(&mut app);
    app.create("a", 100);
    once(&app, &[("UNIVAPAY_SECRET", "wrong-secret")]).assert_code(1);
    let s = parse(&std::fs::read_to_string(&textfile).unwrap());
    assert_eq!(
        value(
            &s,
            "konbini_last_pass_outcome",
            &[("outcome", "auth_failed")]
        ),
        1.0
    );
    assert_eq!(
        value(&s, "konbini_last_pass_outcome", &[("outcome", "ok")]),
        0.0
    );
    assert_eq!(
        value(&s, "konbini_api_requests_total", &[("result", "auth")]),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_textfile_that_cannot_be_written_is_a_warning_not_a_failure() {
    let mut app = TestApp::spawn().await;
    let missing = app.dir.path().join("no-such-dir").join("k.prom");
    app.reconfigure(|c| set_textfile(c, &missing));
    app.create("a", 100);
    let out = once(&app, &[]);
    let err = out.stderr();
    assert_eq!(out.code(), Some(0), "{err}");
    assert!(err.contains("cannot write metrics.textfile"), "{err}");
    assert!(out.stdout().contains("pass 1 ok"), "{}", out.stdout());
    assert!(!missing.parent().unwrap().exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_writes_the_textfile_after_every_pass() {
    use konbini_reconciler::notify::Notifier;
    use konbini_reconciler::reconcile::Reconciler;
    use tokio_util::sync::CancellationToken;

    let mut app = TestApp::spawn().await;
    let textfile = app.dir.path().join("daemon.prom");
    app.reconfigure(|c| {
        c.schedule.cron = Some("* * * * * *".into());
        c.schedule.run_on_start = Some(false);
        set_textfile(c, &textfile);
    });
    app.create("a", 100);
    app.sim.update("a", SimCharge::paid);
    let stop = CancellationToken::new();
    // The real clock: the daemon runs on wall-clock time, unlike the stepped test passes.
    let daemon = tokio::spawn(konbini_reconciler::daemon::run(
        Reconciler::new(app.settings.clone()).unwrap(),
        Notifier::disabled(),
        stop.clone(),
    ));
    let stamp = || -> Option<f64> {
        let text = std::fs::read_to_string(&textfile).ok()?;
        let s = parse(&text);
        s.samples
            .iter()
            .find(|x| x.metric == "konbini_last_pass_timestamp_seconds")
            .map(|x| match x.value {
                Value::Gauge(v) => v,
                _ => f64::NAN,
            })
    };
    // Generous limits: a tick is due every second, but a loaded machine can be slow.
    wait_until(Duration::from_secs(30), "a first textfile", || {
        stamp().is_some()
    })
    .await;
    let first = stamp().unwrap();
    wait_until(Duration::from_secs(30), "a later pass's textfile", || {
        stamp().is_some_and(|t| t > first)
    })
    .await;
    let s = parse(&std::fs::read_to_string(&textfile).unwrap());
    assert_eq!(
        value(&s, "konbini_charges", &[("state", "successful")]),
        1.0
    );
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(30), daemon)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

/// node_exporter's textfile collector, the reader the file is written for, serves it
/// without a parse error. Skipped when node_exporter is not installed.
#[tokio::test(flavor = "multi_thread")]
async fn node_exporter_reads_the_textfile() {
    let Some(exporter) = tool(&["prometheus-node-exporter", "node_exporter"]) else {
        return;
    };
    let mut app = TestApp::spawn().await;
    let textfile = with_textfile(&mut app);
    app.create("a", 100);
    app.sim.update("a", SimCharge::paid);
    once(&app, &[]).assert_code(0);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = tokio::process::Command::new(exporter)
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--collector.disable-defaults")
        .arg("--collector.textfile")
        .arg(format!(
            "--collector.textfile.directory={}",
            textfile.parent().unwrap().display()
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/metrics");
    let mut body = None;
    for _ in 0..100 {
        if let Ok(r) = reqwest::get(&url).await
            && let Ok(t) = r.text().await
        {
            body = Some(t);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child.kill().await.unwrap();
    let body = body.expect("node_exporter answered");
    let s = parse(&body);
    assert_eq!(value(&s, "node_textfile_scrape_error", &[]), 0.0, "{body}");
    assert_eq!(
        value(&s, "konbini_charges", &[("state", "successful")]),
        1.0
    );
    assert!(is_counter(&s, "konbini_api_requests_total"));
}

// ---- the shipped alert rules and dashboard ----------------------------------------------

fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// A snapshot in which every optional figure is present, so its text names every metric.
fn full_snapshot() -> Snapshot {
    let run = RunRow {
        id: 1,
        trigger: "schedule".into(),
        started_at: "2026-05-01T00:00:00.000Z".into(),
        finished_at: Some("2026-05-01T00:00:10.000Z".into()),
        outcome: "ok".into(),
        checked: 100,
        transitions: 5,
        mismatches: 0,
        errors: 0,
        pid: None,
        detail: None,
        due: Some(100),
        stretch: Some(1.0),
        requests: 100,
        resume_at: None,
    };
    let mut api = ClientStats::default();
    api.remaining_route = Some(10);
    api.per_minute_route = Some(1200);
    Snapshot {
        overview: Overview {
            figures: Figures {
                by_state: vec![StateTotal {
                    state: konbini_reconciler::domain::State::Pending,
                    currency: "JPY".into(),
                    count: 1,
                    requested_amount: 100,
                }],
                ..Figures::default()
            },
            last_run: Some(run.clone()),
            last_pass: Some(run),
            last_failure: None,
        },
        api,
        budget_share: 0.5,
        taken_at: chrono::Utc::now(),
        deliveries: vec![konbini_reconciler::ledger::EndpointBacklog {
            endpoint: "shop".into(),
            pending: 1,
            oldest_pending_at: Some("2026-12-02T09:00:00.000Z".into()),
            next_attempt_at: None,
            last_success_at: None,
            last_error: None,
            last_error_at: None,
            delivered: 1,
            failed_attempts: 1,
        }],
    }
}

/// Every `konbini_...` metric name in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("konbini_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

#[test]
fn every_metric_a_budget_snapshot_has_is_rendered() {
    let s = full_snapshot();
    assert_eq!(s.budget_share_used(), Some(100.0 / 10.0 / 20.0));
    let text = render(&s);
    let names = metric_names(&text);
    for want in [
        "konbini_charges",
        "konbini_charges_requested_amount",
        "konbini_mismatches",
        "konbini_unchecked",
        "konbini_last_pass_timestamp_seconds",
        "konbini_pass_duration_seconds",
        "konbini_api_requests_total",
        "konbini_rate_limit_remaining",
        "konbini_budget_share_used",
        "konbini_last_pass_due",
        "konbini_pacer_wait_seconds_total",
    ] {
        assert!(names.contains(want), "{want} missing from\n{text}");
    }
    promtool_accepts_metrics(&text);
}

#[derive(serde::Deserialize)]
struct RuleFile {
    groups: Vec<RuleGroup>,
}

#[derive(serde::Deserialize)]
struct RuleGroup {
    name: String,
    rules: Vec<Rule>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Rule {
    alert: String,
    expr: String,
    #[serde(rename = "for")]
    for_: Option<String>,
    labels: std::collections::BTreeMap<String, String>,
    annotations: std::collections::BTreeMap<String, String>,
}

#[test]
fn the_alert_rules_parse_and_name_only_real_metrics() {
    let path = repo_file("monitoring/alerts.yml");
    let text = std::fs::read_to_string(&path).unwrap();
    let file: RuleFile = serde_norway::from_str(&text).expect("alerts.yml is valid YAML");
    let rendered = metric_names(&render(&full_snapshot()));
    let mut alerts = BTreeSet::new();
    for g in &file.groups {
        assert!(!g.name.is_empty());
        for r in &g.rules {
            assert!(alerts.insert(r.alert.clone()), "duplicate {}", r.alert);
            assert!(r.labels.contains_key("severity"), "{}", r.alert);
            assert!(r.annotations.contains_key("summary"), "{}", r.alert);
            if let Some(f) = &r.for_ {
                humantime::parse_duration(f)
                    .unwrap_or_else(|e| panic!("{}: for {f}: {e}", r.alert));
            }
            for name in metric_names(&r.expr) {
                assert!(
                    rendered.contains(&name),
                    "{}: unknown metric {name}",
                    r.alert
                );
            }
        }
    }
    for want in [
        "KonbiniNoRecentPass",
        "KonbiniNewAmountMismatch",
        "KonbiniUncheckedCharges",
        "KonbiniNotFoundWall",
    ] {
        assert!(alerts.contains(want), "{want} missing: {alerts:?}");
    }
    // With promtool: the rules are valid PromQL, and the unit tests beside them pass.
    if let Some(promtool) = tool(&["promtool"]) {
        for args in [
            &["check", "rules", "monitoring/alerts.yml"][..],
            &["test", "rules", "monitoring/alerts.test.yml"],
        ] {
            let out = Command::new(&promtool)
                .args(args)
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "promtool {args:?}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

#[test]
fn the_dashboard_parses_and_queries_only_real_metrics() {
    let text = std::fs::read_to_string(repo_file("monitoring/grafana-dashboard.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    let panels = dash["panels"].as_array().expect("panels");
    assert!(!panels.is_empty());
    let rendered = metric_names(&render(&full_snapshot()));
    let mut queried = BTreeSet::new();
    for p in panels {
        assert!(p["title"].as_str().is_some_and(|t| !t.is_empty()), "{p}");
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().expect("expr");
            for name in metric_names(expr) {
                assert!(
                    rendered.contains(&name),
                    "{}: unknown metric {name}",
                    p["title"]
                );
                queried.insert(name);
            }
        }
    }
    for want in [
        "konbini_charges",
        "konbini_mismatches",
        "konbini_last_pass_timestamp_seconds",
        "konbini_api_requests_total",
    ] {
        assert!(queried.contains(want), "the dashboard shows {want}");
    }
}
