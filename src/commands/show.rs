//! `show CHARGE_ID`: one charge with its history, wherever it is: from the live ledger,
//! or, for a charge that `retention.archive` moved away, from the archive file
//! (`retention.archive_path`), saying that it is archived and since when. An id in
//! neither is refused (exit 1, one line), as is an archive of another ledger.

use std::io::Write;

use super::{CommandError, writing};
use crate::config::Settings;
use crate::domain::ChargeId;
use crate::ledger::{ChargeRecord, Ledger};

/// Writes charge `id` on `out`: where it is, its columns (one per line, those without a
/// value left out), then its events, oldest first.
pub(crate) fn run(
    settings: &Settings,
    id: &ChargeId,
    out: &mut dyn Write,
) -> Result<(), CommandError> {
    let db = &settings.database;
    let ledger = Ledger::open_if_exists(&db.path, db.busy_timeout)?;
    let archive = &settings.retention.archive_path;
    let record = match ledger.read_charge(id.as_str())? {
        Some(r) => r,
        None => ledger
            .read_archived(archive, id.as_str())?
            .ok_or_else(|| CommandError::Refused(format!("not in the ledger: {id}")))?,
    };
    let text = render(&record, &archive.display().to_string());
    writing(|| {
        out.write_all(text.as_bytes())?;
        out.flush()
    })
}

/// The report; `archive` names the archive file.
fn render(r: &ChargeRecord, archive: &str) -> String {
    let mut s = match &r.archived_at {
        Some(at) => format!("archived       yes, on {at}, in {archive}\n"),
        None => "archived       no (in the live ledger)\n".to_owned(),
    };
    for (name, value) in &r.row {
        if let Some(v) = value {
            s.push_str(&format!("{name:<14} {v}\n"));
        }
    }
    s.push_str("events\n");
    for [at, kind, from, to, detail] in &r.events {
        let field = |v: &Option<String>| v.clone().unwrap_or_default();
        let change = match (from, to) {
            (Some(f), Some(t)) => format!(" {f} -> {t}"),
            (None, Some(t)) => format!(" -> {t}"),
            _ => String::new(),
        };
        let detail = detail
            .as_deref()
            .map(|d| format!(": {}", crate::domain::text::one_line(d)))
            .unwrap_or_default();
        s.push_str(&format!(
            "  {} {}{change}{detail}\n",
            field(at),
            field(kind)
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_archived_charge_says_so_and_empty_columns_are_left_out() {
        let r = ChargeRecord {
            archived_at: Some("2027-02-01T00:00:00.000Z".into()),
            row: vec![
                ("charge_id".into(), Some("ch_1".into())),
                ("last_error".into(), None),
                ("state".into(), Some("successful".into())),
            ],
            events: vec![[
                Some("2026-01-01T00:00:00.000Z".into()),
                Some("transition".into()),
                Some("awaiting".into()),
                Some("successful".into()),
                None,
            ]],
        };
        assert_eq!(
            render(&r, "a.db"),
            "archived       yes, on 2027-02-01T00:00:00.000Z, in a.db\n\
             charge_id      ch_1\n\
             state          successful\n\
             events\n  \
             2026-01-01T00:00:00.000Z transition awaiting -> successful\n"
        );
    }
}
