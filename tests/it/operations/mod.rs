//! Operating the reconciler: the metrics textfile, alert rules and dashboard, `backup`
//! with the restore drill, retention and archiving.

mod archive;
mod backup;
mod metrics;
mod retention;
