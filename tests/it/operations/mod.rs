//! Operating the reconciler: the metrics textfile, alert rules and dashboard, `backup`
//! with the restore drill, and retention.

mod backup;
mod metrics;
mod retention;
