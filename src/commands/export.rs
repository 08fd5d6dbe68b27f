//! `export [--state S] [--since T] [--until T] [--raw]`: the charges as CSV on stdout, for a
//! spreadsheet or for accounting. RFC 4180 (CRLF line ends, fields with a comma, a quote
//! or a line break quoted, quotes doubled), UTF-8, a header row, amounts as plain
//! integers in minor units. `--since` (inclusive) and `--until` (exclusive) select by
//! `updated_at`; rows come in `updated_at` order, read from one snapshot of the ledger.
//!
//! Cells are neutralised for spreadsheets unless `--raw` asks for the values as stored:
//! values such as status words, payment numbers and discovered ids come from the API,
//! and a spreadsheet runs a cell beginning with `=`, `+`, `-`, `@`, a tab or a carriage
//! return as a formula. As OWASP recommends, such a cell gets a leading `'` (which the
//! spreadsheet shows as text and does not display). A cell that is a plain integer (an
//! optional `-` and digits, such as a negative amount) is a number, not a formula, and
//! stays as it is, so amounts keep summing.

use std::io::Write;

use super::{CommandError, output_error};
use crate::config::Settings;
use crate::ledger::{EXPORT_COLUMNS, ExportFilter, Ledger};

/// How cells are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Cells {
    /// Neutralised for spreadsheets (see the module doc): the default.
    #[default]
    Spreadsheet,
    /// As stored (`export --raw`), for programs that read the CSV.
    Raw,
}

/// Writes the charges `filter` selects as CSV to `out`.
pub(crate) fn run(
    settings: &Settings,
    filter: &ExportFilter,
    cells: Cells,
    out: &mut dyn Write,
) -> Result<(), CommandError> {
    let db = &settings.database;
    let ledger = Ledger::open_if_exists(&db.path, db.busy_timeout)?;
    write_csv(&ledger, filter, cells, out)
}

/// The cell as a spreadsheet should get it: a leading `'` before a formula's first
/// character, unless the cell is a plain integer.
pub(crate) fn neutralise(cell: &str) -> std::borrow::Cow<'_, str> {
    let risky = cell.starts_with(['=', '+', '-', '@', '\t', '\r']);
    if risky && !is_integer(cell) {
        std::borrow::Cow::Owned(format!("'{cell}"))
    } else {
        std::borrow::Cow::Borrowed(cell)
    }
}

fn is_integer(cell: &str) -> bool {
    let digits = cell.strip_prefix('-').unwrap_or(cell);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

/// Turns a row into its cells as text, whatever the row's fields: serde writes it as one
/// CSV record into a scratch buffer, which is read back as cells. So every column, also
/// one added later, is neutralised alike.
struct Cellar {
    /// The scratch buffer, kept between rows.
    scratch: Vec<u8>,
    record: csv::StringRecord,
}

impl Cellar {
    fn new() -> Cellar {
        Cellar {
            scratch: Vec::new(),
            record: csv::StringRecord::new(),
        }
    }

    fn cells<T: serde::Serialize>(&mut self, row: &T) -> Result<&csv::StringRecord, csv::Error> {
        let mut buf = std::mem::take(&mut self.scratch);
        buf.clear();
        let mut w = csv::WriterBuilder::new()
            .has_headers(false)
            .from_writer(buf);
        w.serialize(row)?;
        self.scratch = w
            .into_inner()
            .map_err(|e| csv::Error::from(e.into_error()))?;
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .from_reader(self.scratch.as_slice());
        reader.read_record(&mut self.record)?;
        Ok(&self.record)
    }
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
pub(crate) fn write_csv(
    ledger: &Ledger,
    filter: &ExportFilter,
    cells: Cells,
    out: &mut dyn Write,
) -> Result<(), CommandError> {
    let mut w = csv::WriterBuilder::new()
        .has_headers(false)
        .terminator(csv::Terminator::CRLF)
        .from_writer(out);
    let done = (|| -> Result<(), Option<CommandError>> {
        w.write_record(EXPORT_COLUMNS).map_err(csv_error)?;
        let mut cellar = Cellar::new();
        ledger
            .export(filter, |row| match cells {
                Cells::Raw => w.serialize(row),
                Cells::Spreadsheet => {
                    let record = cellar.cells(row)?;
                    w.write_record(record.iter().map(neutralise).map(|c| c.into_owned()))
                }
            })
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
    fn formulas_are_neutralised_and_numbers_stay_numbers() {
        for (cell, want) in [
            ("=1+1", "'=1+1"),
            ("+81 3", "'+81 3"),
            ("-2+3", "'-2+3"),
            ("@SUM(A1)", "'@SUM(A1)"),
            ("\tx", "'\tx"),
            ("\rx", "'\rx"),
            ("-", "'-"),
            ("-100", "-100"),
            ("100", "100"),
            ("", ""),
            ("a=b", "a=b"),
            ("'=x", "'=x"),
            ("20020-123456789012", "20020-123456789012"),
        ] {
            assert_eq!(neutralise(cell), want, "{cell:?}");
        }
    }

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
