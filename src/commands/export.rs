//! `export [--state S] [--since T] [--until T]`: the charges as CSV on stdout, for a
//! spreadsheet or for accounting. RFC 4180 (CRLF line ends, fields with a comma, a quote
//! or a line break quoted, quotes doubled), UTF-8, a header row, amounts as plain
//! integers in minor units. `--since` (inclusive) and `--until` (exclusive) select by
//! `updated_at`; rows come in `updated_at` order, read from one snapshot of the ledger.

use std::io::Write;

use super::{CommandError, output_error};
use crate::config::Settings;
use crate::ledger::{EXPORT_COLUMNS, ExportFilter, Ledger};

/// Writes the charges `filter` selects as CSV to `out`.
pub fn run(
    settings: &Settings,
    filter: &ExportFilter,
    out: &mut dyn Write,
) -> Result<(), CommandError> {
    let db = &settings.database;
    let ledger = Ledger::open_if_exists(&db.path, db.busy_timeout)?;
    write_csv(&ledger, filter, out)
}

fn csv_error(e: csv::Error) -> Option<CommandError> {
    if e.is_io_error() {
        if let csv::ErrorKind::Io(io) = e.into_kind() {
            return output_error(io);
        }
        return None;
    }
    Some(CommandError::Fatal(format!("cannot write CSV: {e}")))
}

/// The CSV itself: the header, then one record per row.
pub fn write_csv(
    ledger: &Ledger,
    filter: &ExportFilter,
    out: &mut dyn Write,
) -> Result<(), CommandError> {
    let mut w = csv::WriterBuilder::new()
        .has_headers(false)
        .terminator(csv::Terminator::CRLF)
        .from_writer(out);
    let done = (|| -> Result<(), Option<CommandError>> {
        w.write_record(EXPORT_COLUMNS).map_err(csv_error)?;
        ledger
            .export(filter, |row| w.serialize(row))
            .map_err(|e| Some(e.into()))?
            .map_err(csv_error)?;
        w.flush().map_err(output_error)
    })();
    match done {
        Ok(()) | Err(None) => Ok(()),
        Err(Some(e)) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::ExportRow;

    #[test]
    fn the_header_is_the_row_struct() {
        // The header is written by hand (so an empty export still has one); serde writes
        // the records. Both must name the same columns in the same order.
        let row = ExportRow {
            charge_id: "c".into(),
            store_id: "s".into(),
            origin: "registered".into(),
            state: "pending".into(),
            provider_status: None,
            requested_amount: 1,
            requested_currency: "JPY".into(),
            charged_amount: None,
            charged_currency: None,
            amount_mismatch: 0,
            mismatch_detail: None,
            payment_number: None,
            konbini: None,
            expires_at: None,
            created_at: "t".into(),
            updated_at: "u".into(),
            order_ref: None,
            paid_at: None,
        };
        let mut w = csv::WriterBuilder::new().from_writer(Vec::new());
        w.serialize(&row).unwrap();
        let text = String::from_utf8(w.into_inner().unwrap()).unwrap();
        assert_eq!(text.lines().next().unwrap(), EXPORT_COLUMNS.join(","));
    }
}
