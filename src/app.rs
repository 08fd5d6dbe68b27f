//! The command-line program: `--once` and the daemon, and how their endings map to exit
//! codes. Everything a user sees on stderr when the program cannot go on is one line that
//! names the cause.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use tokio_util::sync::CancellationToken;

use crate::config::{self, ProcessEnv, Settings};
use crate::ledger::Trigger;
use crate::lock::{Acquired, PassLock};
use crate::reconcile::{PassReport, Reconciler};

/// Reconciles UnivaPay konbini charges into a SQLite ledger.
///
/// Without --once it runs as a daemon, reconciling on the `[schedule] cron` until SIGTERM
/// or SIGINT.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
pub struct Cli {
    /// Path of the config file.
    #[arg(long, value_name = "PATH", env = config::env::CONFIG, default_value = config::DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,
    /// Run one pass over the due charges, print a summary and exit.
    #[arg(long)]
    pub once: bool,
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
    /// `--once` only: another pass (the daemon's or another `--once`) still held the pass
    /// lock when `schedule.lock_wait` ran out; no pass was run.
    Locked = 3,
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> Self {
        ExitCode::from(e as u8)
    }
}

/// Parses the command line. `--help` and `--version` print and exit 0; a usage error is
/// one line on stderr and exit status 1 (clap's usual 2 means "mismatch" here).
pub fn parse_args<I, T>(args: I) -> Result<Cli, ExitCode>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    use clap::error::ErrorKind;
    match Cli::try_parse_from(args) {
        Ok(cli) => Ok(cli),
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            let _ = e.print();
            Err(ExitCode::SUCCESS)
        }
        Err(e) => {
            let text = e.render().to_string();
            let first = text.lines().next().unwrap_or("invalid arguments");
            let first = first.strip_prefix("error: ").unwrap_or(first);
            report_fatal(format_args!("{first} (see --help)"));
            Err(Exit::Fatal.into())
        }
    }
}

/// Prints the one-line fatal error.
pub fn report_fatal(message: impl std::fmt::Display) {
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
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            report_fatal(format_args!("cannot start the async runtime: {e}"));
            return Exit::Fatal.into();
        }
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

/// The daemon: passes on the schedule until `shutdown`; 0 on a clean stop.
pub async fn run_daemon(settings: Arc<Settings>, shutdown: CancellationToken) -> Exit {
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
pub async fn run_once(settings: Arc<Settings>, shutdown: CancellationToken) -> Exit {
    let lock_wait = settings.schedule.lock_wait;
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
            let holder = busy
                .holder
                .map_or_else(String::new, |pid| format!(" by pid {pid}"));
            report_fatal(format_args!(
                "another pass is running (pass lock {} held{holder}); gave up after {} (schedule.lock_wait)",
                lock.path().display(),
                humantime::format_duration(lock_wait)
            ));
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
    if let Err(e) = crate::discovery::before_pass(&reconciler, &guard, &shutdown).await {
        report_fatal(e);
        return Exit::Fatal;
    }
    match reconciler.run_pass(&guard, Trigger::Once, shutdown).await {
        Ok(report) => {
            println!("{}", report.summary_line());
            exit_for(&report)
        }
        Err(e) => {
            report_fatal(e);
            Exit::Fatal
        }
    }
}

/// Maps a finished pass to the contract's exit status, printing the cause of a fatal one.
pub fn exit_for(report: &PassReport) -> Exit {
    if report.outcome.is_failure() {
        report_fatal(report.detail.as_deref().unwrap_or(report.outcome.as_str()));
        Exit::Fatal
    } else if report.counts.mismatches > 0 {
        Exit::Mismatch
    } else {
        Exit::Clean
    }
}
