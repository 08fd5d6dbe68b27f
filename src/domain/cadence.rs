//! How often an open charge is checked: the recheck schedule as a value.

use std::time::Duration;

/// From `age` on (time since the charge's `created_at`), an unchanged open charge is due
/// again `every` after its last check. A schedule is a list of steps sorted by `age`, the
/// first at age 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecheckStep {
    pub age: Duration,
    pub every: Duration,
}
