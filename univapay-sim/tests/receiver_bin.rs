//! The `sim-webhook-receiver` binary: its address line, one JSON line per delivery, plans
//! from the command line, the summary on SIGTERM, and one clear line for bad arguments.

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

const SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

fn signed_post(url: &str, id: &str, body: &str) -> u16 {
    let ts = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let sig = standardwebhooks::Webhook::new(SECRET)
        .unwrap()
        .sign(id, ts, body.as_bytes())
        .unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        reqwest::Client::new()
            .post(url)
            .header("webhook-id", id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", sig)
            .body(body.to_owned())
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    })
}

#[test]
fn the_binary_prints_each_verified_delivery_and_a_summary() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sim-webhook-receiver"))
        .args(["--endpoint", "shop"])
        .args(["--plan", r#"shop={"next":[{"status":503}]}"#])
        .env("SIM_RECEIVER_SECRET_SHOP", SECRET)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let base = line
        .trim()
        .strip_prefix("sim-webhook-receiver listening on ")
        .unwrap_or_else(|| panic!("{line}"))
        .to_owned();
    assert!(base.starts_with("http://127.0.0.1:"), "{base}");
    let body = json!({"type": "charge.paid", "data": {"event_id": 1, "order_ref": "12345"}});
    let url = format!("{base}/shop");
    assert_eq!(signed_post(&url, "evt_1", &body.to_string()), 503);
    assert_eq!(signed_post(&url, "evt_1", &body.to_string()), 200);
    let mut lines = vec![];
    for _ in 0..2 {
        let mut l = String::new();
        out.read_line(&mut l).unwrap();
        lines.push(serde_json::from_str::<Value>(&l).unwrap());
    }
    assert_eq!(lines[0]["answer"], json!({"status": 503}));
    assert_eq!(lines[1]["answer"], json!({"status": 200}));
    for l in &lines {
        assert_eq!(l["verified"], true, "{l}");
        assert_eq!(l["type"], "charge.paid");
        assert_eq!(l["body"]["data"]["order_ref"], "12345");
    }
    assert_eq!(lines[1]["attempt"], 2);
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    assert!(child.wait().unwrap().success());
    let summary: Value = serde_json::from_str(rest.trim()).unwrap();
    assert_eq!(summary["shop"]["received"], 2);
    assert_eq!(summary["shop"]["accepted"], 1);
}

#[test]
fn a_bad_secret_is_one_line_naming_the_endpoint() {
    let out = Command::new(env!("CARGO_BIN_EXE_sim-webhook-receiver"))
        .args(["--endpoint", "shop=not-a-secret"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("\"shop\"") && err.contains("whsec_"), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_sim-webhook-receiver"))
        .args(["--endpoint", "shop"])
        .env_remove("SIM_RECEIVER_SECRET_SHOP")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("SIM_RECEIVER_SECRET_SHOP"), "{err}");
}
