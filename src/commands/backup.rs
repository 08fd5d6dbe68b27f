//! `backup DEST [--force]`: a consistent, integrity-checked copy of the ledger, taken
//! beside a running daemon and written atomically (see [`crate::ledger::backup`]). One
//! line on stdout says what was written; any failure is one line on stderr and exit 1,
//! with DEST left as it was.

use std::io::Write;
use std::path::Path;

use super::{CommandError, writing};
use crate::config::Settings;
use crate::ledger::backup::{self, BackupError};

impl From<BackupError> for CommandError {
    fn from(e: BackupError) -> Self {
        match e {
            BackupError::Ledger(e) => CommandError::Ledger(e),
            BackupError::LiveDatabase { .. }
            | BackupError::Exists { .. }
            | BackupError::BadDestination { .. } => CommandError::Refused(e.to_string()),
            BackupError::Copy { .. } | BackupError::Integrity { .. } | BackupError::Io { .. } => {
                CommandError::Fatal(e.to_string())
            }
        }
    }
}

/// Writes the backup to `dest` and reports it on `out`.
pub(crate) fn run(
    settings: &Settings,
    dest: &Path,
    force: bool,
    out: &mut dyn Write,
) -> Result<(), CommandError> {
    let db = &settings.database;
    let w = backup::backup(&db.path, db.busy_timeout, dest, force)?;
    writing(|| {
        writeln!(
            out,
            "backup written to {}: {} bytes, {} charges, {} events, {} runs; integrity ok",
            w.dest.display(),
            w.bytes,
            w.charges,
            w.events,
            w.runs
        )?;
        out.flush()
    })
}
