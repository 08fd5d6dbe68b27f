//! `cargo run -p xtask -- dist [OUT]`: writes what the Debian package ships beside the
//! binary, generated from the program's own definitions so that it never drifts from
//! them:
//! - `OUT/man/`: `konbini-reconciler.1` and one page per command
//!   (`konbini-reconciler-backup.1`, ...), from the clap definitions (clap_mangen);
//! - `OUT/completions/`: bash, zsh and fish completions (clap_complete);
//! - `OUT/systemd/`: the units of `systemd/`, with the binary at `/usr/bin` where the
//!   package puts it (the files in `systemd/` name `/usr/local/bin`, for a hand install).
//!
//! `OUT` defaults to `target/dist`, where `[package.metadata.deb]` looks for them.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::CommandFactory;
use clap_complete::Shell;
// The one place that names where the command line is defined.
use clap_mangen::roff::{Roff, bold, roman};
use konbini_reconciler::app::{Cli, Exit};
use konbini_reconciler::config::env;

const BIN: &str = "konbini-reconciler";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["dist"] => dist(Path::new("target/dist")),
        ["dist", out] => dist(Path::new(out)),
        _ => bail!("usage: cargo run -p xtask -- dist [OUT]"),
    }
}

fn dist(out: &Path) -> Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    man_pages(&out.join("man"))?;
    completions(&out.join("completions"))?;
    units(&root.join("systemd"), &out.join("systemd"))?;
    println!("wrote {}", out.display());
    Ok(())
}

fn fresh_dir(dir: &Path) -> Result<()> {
    if dir.exists() {
        fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
}

/// The main page and a page per command (`konbini-reconciler-backup.1`, ...), named as
/// `man konbini-reconciler-backup` expects. The main page adds what clap does not know:
/// the exit statuses, the environment, the files and where to read on.
fn man_pages(dir: &Path) -> Result<()> {
    fresh_dir(dir)?;
    let cmd = Cli::command().name(BIN).bin_name(BIN);
    clap_mangen::generate_to(cmd.clone(), dir)
        .with_context(|| format!("writing the man pages to {}", dir.display()))?;
    let path = dir.join(format!("{BIN}.1"));
    fs::write(&path, main_page(cmd)?).with_context(|| format!("writing {}", path.display()))
}

fn main_page(cmd: clap::Command) -> Result<Vec<u8>> {
    let man = clap_mangen::Man::new(cmd);
    let mut page = Vec::new();
    man.render_title(&mut page)?;
    man.render_name_section(&mut page)?;
    man.render_synopsis_section(&mut page)?;
    man.render_description_section(&mut page)?;
    man.render_options_section(&mut page)?;
    man.render_subcommands_section(&mut page)?;
    let mut roff = Roff::default();
    roff.control("SH", ["EXIT STATUS"]);
    for exit in [
        Exit::Clean,
        Exit::Fatal,
        Exit::Mismatch,
        Exit::Locked,
        Exit::RateLimited,
    ] {
        roff.control("TP", [])
            .text([bold((exit as u8).to_string())]);
        roff.text([roman(exit_meaning(exit))]);
    }
    roff.control("SH", ["ENVIRONMENT"]);
    for (name, meaning) in [
        (env::CONFIG, "the config file, as --config"),
        (env::APP_TOKEN, "overrides api.app_token"),
        (env::SECRET, "overrides api.secret and api.secret_file"),
        (env::WEBHOOK_TOKEN, "overrides webhook.auth_token"),
        (
            env::CREDENTIALS_DIRECTORY,
            "set by systemd for LoadCredential=; may be named in api.secret_file",
        ),
    ] {
        roff.control("TP", []).text([bold(name)]);
        roff.text([roman(meaning)]);
    }
    roff.control("SH", ["FILES"]);
    for (file, meaning) in [
        (
            "/etc/konbini-reconciler/config.toml",
            "the packaged config, read by the packaged units (every key commented)",
        ),
        (
            "/var/lib/konbini-reconciler/",
            "the state directory of konbini-reconciler.service: the ledger and its .lock",
        ),
        (
            "/usr/share/doc/konbini-reconciler/",
            "README.md and operations.md: backup, restore, Litestream, several merchants",
        ),
    ] {
        roff.control("TP", []).text([bold(file)]);
        roff.text([roman(meaning)]);
    }
    roff.control("SH", ["SEE ALSO"]);
    roff.text([roman(
        "konbini-reconciler-backup(1), systemctl(1), systemd.exec(5), sqlite3(1), litestream(1)",
    )]);
    roff.to_writer(&mut page)?;
    man.render_version_section(&mut page)?;
    Ok(page)
}

/// What each exit status means: exhaustive, so a new status fails this build until it
/// is described here.
fn exit_meaning(exit: Exit) -> &'static str {
    match exit {
        Exit::Clean => {
            "the pass completed and flagged no new amount mismatch, the command did its job, or the daemon stopped cleanly"
        }
        Exit::Fatal => {
            "fatal: bad config or arguments, the database cannot be opened or written, credentials rejected, UnivaPay unreachable; one line on stderr names the cause"
        }
        Exit::Mismatch => "--once and check: the pass flagged at least one new amount mismatch",
        Exit::Locked => {
            "--once and check: another pass held the pass lock for longer than schedule.lock_wait; nothing was checked"
        }
        Exit::RateLimited => {
            "--once only: UnivaPay asked for a pause longer than a pass waits; the charges not reached stay due"
        }
    }
}

fn completions(dir: &Path) -> Result<()> {
    fresh_dir(dir)?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let mut cmd = Cli::command();
        let path = clap_complete::generate_to(shell, &mut cmd, BIN, dir)
            .with_context(|| format!("writing the {shell} completions"))?;
        // bash-completion looks a command's completions up by the command's bare name.
        if shell == Shell::Bash {
            fs::rename(&path, dir.join(BIN))?;
        }
    }
    Ok(())
}

fn units(from: &Path, dir: &Path) -> Result<()> {
    fresh_dir(dir)?;
    let mut names: Vec<PathBuf> = fs::read_dir(from)
        .with_context(|| format!("reading {}", from.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    names.sort();
    for unit in names {
        let text =
            fs::read_to_string(&unit).with_context(|| format!("reading {}", unit.display()))?;
        let text = text.replace("/usr/local/bin", "/usr/bin");
        fs::write(dir.join(unit.file_name().unwrap_or_default()), text)?;
    }
    Ok(())
}
