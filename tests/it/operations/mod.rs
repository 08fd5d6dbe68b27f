//! Operating the reconciler: the metrics textfile, alert rules and dashboard, and `backup`
//! with the restore drill.

mod backup;
mod metrics;
