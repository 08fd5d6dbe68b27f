//! The command-line program: `--once`, the daemon and the operator's commands
//! (`crate::commands`), and how their endings map to exit codes. Everything a user sees
//! on stderr when the program cannot go on is one line that names the cause.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::commands::{self, CommandError, recheck};
use crate::config::{self, ProcessEnv, Settings};
use crate::domain::{ChargeId, Currency, State, StoreId};
use crate::ledger::{ExportFilter, NewCharge, Outcome};
use crate::lock::{Acquired, PassLock};
use crate::reconcile::{PassReport, Reconciler};

/// Reconciles UnivaPay konbini charges into a SQLite ledger.
///
/// Without --once or a command it runs as a daemon, reconciling on the `[schedule] cron`
/// until SIGTERM or SIGINT.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
pub struct Cli {
    /// Path of the config file.
    #[arg(long, value_name = "PATH", env = config::env::CONFIG, default_value = config::DEFAULT_CONFIG_PATH, global = true)]
    pub(crate) config: PathBuf,
    /// Run one pass over the due charges, print a summary and exit.
    #[arg(long)]
    pub(crate) once: bool,
    #[command(subcommand)]
    pub(crate) command: Option<Command>,
}

/// The operator's commands. They use the database and credentials of the config, and run
/// beside the daemon.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// What the ledger says now: charges and amounts per state, mismatches, unchecked and
    /// due charges, the last run.
    Status {
        /// One JSON object instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Register a charge (the plain INSERT, validated); creates the database if needed.
    #[command(allow_negative_numbers = true)]
    Register {
        #[arg(value_parser = commands::parse_charge_id)]
        charge_id: ChargeId,
        #[arg(value_parser = commands::parse_store_id)]
        store_id: StoreId,
        /// The amount asked for, in minor units (yen).
        #[arg(value_parser = commands::parse_amount)]
        amount: i64,
        #[arg(long, value_name = "CUR", default_value = "JPY", value_parser = commands::parse_currency)]
        currency: Currency,
        /// The payment deadline, if known.
        #[arg(long, value_name = "RFC3339", value_parser = commands::parse_time)]
        expires_at: Option<DateTime<Utc>>,
        /// The shop's order reference (else taken from the charge's metadata).
        #[arg(long, value_name = "REF", value_parser = commands::parse_order_ref)]
        order: Option<String>,
    },
    /// Check these charges now, under the pass lock; one line each. Exits like --once.
    Check {
        #[arg(required = true, value_name = "CHARGE_ID", value_parser = commands::parse_charge_id)]
        charge_ids: Vec<ChargeId>,
    },
    /// Make open charges due now (never reopens a final charge).
    #[command(group(clap::ArgGroup::new("which").required(true).args(["unchecked", "charge_ids"])))]
    Recheck {
        /// Every open charge that is no longer checked (given up after repeated 404s).
        #[arg(long)]
        unchecked: bool,
        #[arg(value_name = "CHARGE_ID", value_parser = commands::parse_charge_id)]
        charge_ids: Vec<ChargeId>,
    },
    /// The charges as CSV (RFC 4180) on stdout.
    Export {
        /// Only charges in this state.
        #[arg(long, value_name = "STATE", value_parser = commands::parse_state)]
        state: Option<State>,
        /// Only charges updated at or after this time.
        #[arg(long, value_name = "RFC3339", value_parser = commands::parse_time)]
        since: Option<DateTime<Utc>>,
        /// Only charges updated before this time.
        #[arg(long, value_name = "RFC3339", value_parser = commands::parse_time)]
        until: Option<DateTime<Utc>>,
        /// Cells exactly as stored, for programs; without it, cells a spreadsheet would
        /// run as a formula (=, +, -, @, tab, CR first) get a leading '.
        #[arg(long)]
        raw: bool,
    },
    /// One charge with its history, from the ledger or, once archived, from the archive.
    Show {
        #[arg(value_name = "CHARGE_ID", value_parser = commands::parse_charge_id)]
        charge_id: ChargeId,
    },
    /// A consistent copy of the ledger, integrity-checked, written atomically to DEST
    /// (beside a running daemon; never over the live database).
    Backup {
        /// The file to write; its directory must exist.
        #[arg(value_name = "DEST")]
        dest: PathBuf,
        /// Replace DEST if it exists (atomically: the old file stays until the new one is whole).
        #[arg(long)]
        force: bool,
    },
    /// The change feed: one JSON payload per line, ascending event id.
    Events {
        /// Only events after this id (the last one processed).
        #[arg(long, value_name = "ID", default_value_t = 0)]
        after: i64,
        /// Keep waiting for new events (until SIGTERM/SIGINT or a closed stdout).
        #[arg(long)]
        follow: bool,
        /// Only events of this type (repeatable).
        #[arg(long = "type", value_name = "T", value_parser = commands::events::parse_type)]
        types: Vec<String>,
    },
    /// Deliveries to the shop's endpoints: what is pending and why.
    Deliveries {
        /// One JSON object instead of the lines.
        #[arg(long)]
        json: bool,
        #[command(subcommand)]
        action: Option<DeliveriesAction>,
    },
}

/// `deliveries replay` and `deliveries test`.
#[derive(Debug, Subcommand)]
pub(crate) enum DeliveriesAction {
    /// Make deliveries due now and send them (re-signed, same webhook-id).
    #[command(group(clap::ArgGroup::new("which").required(true).args(["events", "since"])))]
    Replay {
        /// These events (repeatable).
        #[arg(long = "event", value_name = "ID")]
        events: Vec<i64>,
        /// Every event at or after this time.
        #[arg(long, value_name = "RFC3339", value_parser = commands::parse_time)]
        since: Option<DateTime<Utc>>,
        /// Only to this endpoint.
        #[arg(long, value_name = "NAME")]
        endpoint: Option<String>,
    },
    /// Send one signed `test` event; exit 0 on a 2xx.
    Test {
        #[arg(long, value_name = "NAME")]
        endpoint: Option<String>,
    },
}

/// The documented exit statuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    /// The pass completed and flagged no new amount mismatch (or the daemon stopped cleanly).
    Clean = 0,
    /// Fatal: bad config, database trouble, credentials rejected, API unreachable.
    Fatal = 1,
    /// The pass completed and flagged at least one new amount mismatch.
    Mismatch = 2,
    /// `--once` and `check`: another pass (the daemon's or another `--once`) still held the
    /// pass lock when `schedule.lock_wait` ran out; nothing was checked.
    Locked = 3,
    /// `--once` only: UnivaPay asked for a pause longer than a pass waits, so the pass
    /// ended early (`runs.outcome = 'rate_limited'`, `runs.resume_at`); the charges not
    /// reached stay due. Not fatal: config, ledger and credentials are fine.
    RateLimited = 4,
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> Self {
        ExitCode::from(e as u8)
    }
}

/// Parses the command line. `--help` and `--version` print and exit 0; a usage error is
/// one line on stderr (clap's message and its usage line) and exit status 1 (clap's usual
/// 2 means "mismatch" here).
pub fn parse_args<I, T>(args: I) -> Result<Cli, ExitCode>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    use clap::CommandFactory;
    use clap::error::ErrorKind;
    match Cli::try_parse_from(args) {
        Ok(cli) if cli.once && cli.command.is_some() => {
            let e = Cli::command().error(
                ErrorKind::ArgumentConflict,
                "--once cannot be used with a command",
            );
            report_fatal(usage_line(&e.render().to_string()));
            Err(Exit::Fatal.into())
        }
        Ok(cli) => Ok(cli),
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            let _ = e.print();
            Err(ExitCode::SUCCESS)
        }
        Err(e) => {
            report_fatal(usage_line(&e.render().to_string()));
            Err(Exit::Fatal.into())
        }
    }
}

/// Clap's error text on one line: its first paragraph (the message, with any list of
/// missing arguments) and its usage line.
fn usage_line(rendered: &str) -> String {
    let message: Vec<&str> = rendered
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect();
    let message = message.join(" ");
    let message = message.strip_prefix("error: ").unwrap_or(&message);
    let message = if message.is_empty() {
        "invalid arguments"
    } else {
        message
    };
    let usage = rendered
        .lines()
        .find_map(|l| l.trim().strip_prefix("Usage: "))
        .map(|u| format!("; usage: {}", u.trim()))
        .unwrap_or_default();
    format!("{message}{usage} (see --help)")
}

/// Prints the one-line fatal error.
pub(crate) fn report_fatal(message: impl std::fmt::Display) {
    eprintln!("konbini-reconciler: error: {message}");
}

/// Entry point behind `main`.
pub fn main(cli: Cli) -> ExitCode {
    let settings = match Settings::load(&cli.config, &ProcessEnv) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            report_fatal(e);
            return Exit::Fatal.into();
        }
    };
    crate::telemetry::init(settings.log.format);
    for warning in &settings.warnings {
        tracing::warn!("{warning}");
    }
    if let Some(command) = cli.command {
        return run_command(command, settings).into();
    }
    let runtime = match runtime() {
        Ok(rt) => rt,
        Err(exit) => return exit.into(),
    };
    // The work runs as a spawned task, on a worker thread beside the HTTP connections'
    // tasks, rather than on this thread inside `block_on`: every answer would otherwise
    // cross between threads twice, which costs more CPU than the check itself.
    let exit = runtime.block_on(async move {
        let shutdown = crate::shutdown::on_signal();
        let work = tokio::spawn(async move {
            if cli.once {
                run_once(settings, shutdown).await
            } else {
                run_daemon(settings, shutdown).await
            }
        });
        work.await.unwrap_or_else(|e| {
            report_fatal(format_args!("internal error: {e}"));
            Exit::Fatal
        })
    });
    exit.into()
}

fn runtime() -> Result<tokio::runtime::Runtime, Exit> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            report_fatal(format_args!("cannot start the async runtime: {e}"));
            Exit::Fatal
        })
}

/// One of the operator's commands, with its report on stdout.
pub(crate) fn run_command(command: Command, settings: Arc<Settings>) -> Exit {
    let mut out = std::io::stdout();
    let now = Utc::now();
    let done = match command {
        Command::Status { json } => commands::status::run(&settings, json, now, &mut out),
        Command::Register {
            charge_id,
            store_id,
            amount,
            currency,
            expires_at,
            order,
        } => {
            let charge = NewCharge {
                charge_id,
                store_id,
                amount,
                currency,
                expires_at,
                order_ref: order,
            };
            commands::register::run(&settings, &charge, &mut out)
        }
        Command::Check { charge_ids } => return run_check(settings, charge_ids),
        Command::Recheck {
            unchecked,
            charge_ids,
        } => {
            let target = if unchecked {
                recheck::Target::Unchecked
            } else {
                recheck::Target::Ids(charge_ids)
            };
            commands::recheck::run(&settings, &target, now, &mut out)
        }
        Command::Export {
            state,
            since,
            until,
            raw,
        } => {
            let filter = ExportFilter {
                state,
                since,
                until,
            };
            let cells = if raw {
                commands::export::Cells::Raw
            } else {
                commands::export::Cells::Spreadsheet
            };
            commands::export::run(&settings, &filter, cells, &mut out)
        }
        Command::Backup { dest, force } => commands::backup::run(&settings, &dest, force, &mut out),
        Command::Show { charge_id } => commands::show::run(&settings, &charge_id, &mut out),
        Command::Events {
            after,
            follow,
            types,
        } => {
            let args = commands::events::FeedArgs {
                after,
                follow,
                types,
            };
            commands::events::run(&settings, &args, &mut out)
        }
        Command::Deliveries { json, action: None } => {
            commands::deliveries::list(&settings, json, now, &mut out)
        }
        Command::Deliveries {
            action: Some(action),
            ..
        } => run_deliveries(settings, action),
    };
    done.map_or_else(|e| command_failed(&e), |()| Exit::Clean)
}

fn command_failed(e: &CommandError) -> Exit {
    report_fatal(e);
    match e {
        CommandError::Locked(_) => Exit::Locked,
        _ => Exit::Fatal,
    }
}

/// `deliveries replay` and `deliveries test`, on the runtime.
fn run_deliveries(settings: Arc<Settings>, action: DeliveriesAction) -> Result<(), CommandError> {
    let runtime = runtime().map_err(|_| CommandError::Fatal("no async runtime".into()))?;
    runtime.block_on(async move {
        let mut out = std::io::stdout();
        match action {
            DeliveriesAction::Replay {
                events,
                since,
                endpoint,
            } => {
                let args = commands::deliveries::ReplayArgs {
                    events,
                    since,
                    endpoint,
                };
                commands::deliveries::replay(&settings, &args, &mut out).await
            }
            DeliveriesAction::Test { endpoint } => {
                commands::deliveries::test(&settings, endpoint.as_deref(), &mut out).await
            }
        }
    })
}

/// `check`: on the runtime, like `--once`, and with its exit statuses.
fn run_check(settings: Arc<Settings>, ids: Vec<ChargeId>) -> Exit {
    let runtime = match runtime() {
        Ok(rt) => rt,
        Err(exit) => return exit,
    };
    runtime.block_on(async move {
        let shutdown = crate::shutdown::on_signal();
        let work = tokio::spawn(async move {
            let mut out = std::io::stdout();
            if let Err(e) = crate::delivery::worker::sync(&settings, false).await {
                return Err(CommandError::Ledger(e));
            }
            commands::check::run(settings, ids, shutdown, &mut out).await
        });
        match work.await {
            Ok(Ok(Some(report))) => exit_for(&report),
            Ok(Ok(None)) => {
                tracing::info!(
                    "shutdown requested while waiting for the pass lock; nothing checked"
                );
                Exit::Clean
            }
            Ok(Err(e)) => command_failed(&e),
            Err(e) => {
                report_fatal(format_args!("internal error: {e}"));
                Exit::Fatal
            }
        }
    })
}

/// The daemon: passes on the schedule until `shutdown`; 0 on a clean stop.
pub(crate) async fn run_daemon(settings: Arc<Settings>, shutdown: CancellationToken) -> Exit {
    let reconciler = match Reconciler::new(settings) {
        Ok(r) => r,
        Err(e) => {
            report_fatal(format_args!("{e:#}"));
            return Exit::Fatal;
        }
    };
    match crate::daemon::run(reconciler, crate::notify::Notifier::from_env(), shutdown).await {
        Ok(_) => Exit::Clean,
        Err(e) => {
            report_fatal(e);
            Exit::Fatal
        }
    }
}

/// `--once`: one pass under the pass lock (after a discovery sweep, when one is due), a
/// summary line on stdout, and the exit status.
/// Waits up to `schedule.lock_wait` for a pass that is already running, then gives up with
/// [`Exit::Locked`].
pub(crate) async fn run_once(settings: Arc<Settings>, shutdown: CancellationToken) -> Exit {
    let lock_wait = settings.schedule.lock_wait;
    // Before the lock file is made beside it: `/dev/null.lock` says nothing useful.
    if let Err(e) = crate::ledger::check_path(&settings.database.path) {
        report_fatal(e);
        return Exit::Fatal;
    }
    let lock = PassLock::for_database(&settings.database.path);
    let reconciler = match Reconciler::new(settings) {
        Ok(r) => r,
        Err(e) => {
            report_fatal(format_args!("{e:#}"));
            return Exit::Fatal;
        }
    };
    let guard = match lock.acquire_within(lock_wait, &shutdown).await {
        Ok(Acquired::Held(guard)) => guard,
        Ok(Acquired::Busy(busy)) => {
            report_fatal(commands::check::lock_busy(&lock, &busy, lock_wait));
            return Exit::Locked;
        }
        Ok(Acquired::Cancelled) => {
            tracing::info!("shutdown requested while waiting for the pass lock; no pass run");
            return Exit::Clean;
        }
        Err(e) => {
            report_fatal(e);
            return Exit::Fatal;
        }
    };
    if let Err(e) = crate::delivery::worker::sync(reconciler.settings(), true).await {
        report_fatal(e);
        return Exit::Fatal;
    }
    // The same jobs as the daemon's, each once, under the one lock; the delivery job's
    // drain sends what the pass found.
    let pass = crate::jobs::pass::PassJob::once(reconciler.clone());
    let jobs = crate::daemon::jobs_for(&reconciler, pass);
    let drain = reconciler.settings().schedule.drain_timeout;
    let ended = crate::jobs::once(&jobs, Arc::new(guard), drain, &shutdown).await;
    if let Some(e) = ended.fatal {
        report_fatal(e);
        return Exit::Fatal;
    }
    match ended.pass {
        Some(Ok(report)) => {
            println!("{}", report.summary_line());
            exit_for(&report)
        }
        Some(Err(e)) => {
            report_fatal(e);
            Exit::Fatal
        }
        None => Exit::Clean,
    }
}

/// Maps a finished pass to the contract's exit status, printing the cause of a fatal one
/// (and of an early end for a rate limit). A new mismatch outranks a rate limit: it is
/// news that must not be lost.
pub(crate) fn exit_for(report: &PassReport) -> Exit {
    if report.outcome.is_failure() {
        report_fatal(report.detail.as_deref().unwrap_or(report.outcome.as_str()));
        Exit::Fatal
    } else if report.counts.mismatches > 0 {
        Exit::Mismatch
    } else if report.outcome == Outcome::RateLimited {
        eprintln!(
            "konbini-reconciler: {}",
            report.detail.as_deref().unwrap_or(report.outcome.as_str())
        );
        Exit::RateLimited
    } else {
        Exit::Clean
    }
}
