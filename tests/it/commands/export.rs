//! `export` and spreadsheets: formula cells neutralised unless `--raw`.

use crate::helpers::TestApp;

/// Cells a spreadsheet would run are neutralised with a leading `'`; numbers stay numbers
/// (a negative one too: see the unit test of `neutralise`, the ledger holds none);
/// `--raw` writes the values as stored.
#[tokio::test]
async fn export_neutralises_formula_cells_unless_raw() {
    let app = TestApp::spawn().await;
    app.db()
        .execute_batch(
            "INSERT INTO charges (charge_id, store_id, requested_amount, provider_status,
                 mismatch_detail, payment_number, created_at, updated_at)
             VALUES ('-c1', 's1', 100, '@SUM(A1)', '=HYPERLINK(\"http://x\")',
                 '+81 3-1234', '2026-01-01T00:00:00.000Z', '2026-01-01T00:00:00.000Z');",
        )
        .unwrap();
    let header = "charge_id,store_id,origin,state,provider_status,requested_amount,requested_currency,charged_amount,charged_currency,amount_mismatch,mismatch_detail,payment_number,konbini,expires_at,created_at,updated_at,order_ref,paid_at\r\n";
    let out = app.command().arg("export").run();
    out.assert_code(0);
    assert_eq!(
        out.stdout(),
        format!(
            "{header}'-c1,s1,registered,pending,'@SUM(A1),100,JPY,,,0,\"'=HYPERLINK(\"\"http://x\"\")\",'+81 3-1234,,,2026-01-01T00:00:00.000Z,2026-01-01T00:00:00.000Z,,\r\n"
        )
    );
    let raw = app.command().args(["export", "--raw"]).run();
    raw.assert_code(0);
    assert_eq!(
        raw.stdout(),
        format!(
            "{header}-c1,s1,registered,pending,@SUM(A1),100,JPY,,,0,\"=HYPERLINK(\"\"http://x\"\")\",+81 3-1234,,,2026-01-01T00:00:00.000Z,2026-01-01T00:00:00.000Z,,\r\n"
        )
    );
}
