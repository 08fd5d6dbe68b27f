//! The values that describe one pass: how it was started, how it ended, and what it
//! counted (the `runs` table).

/// How a pass was started (`runs.trigger`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Once,
    Schedule,
    /// The `check` command: named charges, checked now.
    Check,
    /// Checks started by webhook hints.
    Webhook,
}

impl Trigger {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Trigger::Once => "once",
            Trigger::Schedule => "schedule",
            Trigger::Check => "check",
            Trigger::Webhook => "webhook",
        }
    }
}

/// How a pass ended (`runs.outcome`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Interrupted,
    AuthFailed,
    Unreachable,
    Failed,
    /// UnivaPay asked for a pause longer than a pass should wait; the rest stays due.
    RateLimited,
    /// Every check (of at least a few) answered 404: a wrong base URL, account or a
    /// maintenance page, not missing charges.
    NotFoundWall,
}

impl Outcome {
    /// The pass could not do its job: credentials rejected, API unreachable, ledger
    /// failed. `--once` exits 1 on these; the daemon logs them as errors.
    pub fn is_failure(self) -> bool {
        matches!(
            self,
            Outcome::AuthFailed | Outcome::Unreachable | Outcome::Failed | Outcome::NotFoundWall
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Interrupted => "interrupted",
            Outcome::AuthFailed => "auth_failed",
            Outcome::Unreachable => "unreachable",
            Outcome::Failed => "failed",
            Outcome::RateLimited => "rate_limited",
            Outcome::NotFoundWall => "not_found_wall",
        }
    }
}

/// Counters of one pass, as stored in `runs`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub checked: u64,
    pub transitions: u64,
    pub mismatches: u64,
    pub errors: u64,
}

impl std::ops::AddAssign for Counts {
    fn add_assign(&mut self, o: Counts) {
        self.checked += o.checked;
        self.transitions += o.transitions;
        self.mismatches += o.mismatches;
        self.errors += o.errors;
    }
}
