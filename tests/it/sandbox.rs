//! Running the real binary under hostile conditions: a clean environment, an unprivileged
//! user (so file permissions mean something when the suite runs as root), a file-size limit
//! (a full disk), and snapshots of a directory to prove that nothing in it changed.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The conventional `nobody` user and group.
pub const NOBODY: u32 = 65534;

/// The binary, by a path that `nobody` can execute too. Normally the build's own path;
/// when that lies under a directory other users cannot traverse (a checkout under a 0700
/// home, say), a descriptor of the file inherited by every child, executed through
/// `/proc/self/fd`, which does not walk the original directories.
pub fn program() -> PathBuf {
    static PROGRAM: OnceLock<PathBuf> = OnceLock::new();
    PROGRAM
        .get_or_init(|| {
            let real = Path::new(env!("CARGO_BIN_EXE_konbini-reconciler"));
            if !is_root() || traversable(real) {
                return real.to_owned();
            }
            let c = CString::new(real.as_os_str().as_bytes()).unwrap();
            // SAFETY: a plain open(2) of a NUL-terminated path. No O_CLOEXEC on purpose:
            // children must inherit the descriptor to exec it.
            let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY) };
            assert!(fd >= 0, "cannot open {}", real.display());
            PathBuf::from(format!("/proc/self/fd/{fd}"))
        })
        .clone()
}

/// Whether every directory above `path` can be traversed by other users.
fn traversable(path: &Path) -> bool {
    path.ancestors()
        .skip(1)
        .all(|a| std::fs::metadata(a).is_ok_and(|m| m.permissions().mode() & 0o001 != 0))
}

/// The binary with an empty environment (only `PATH`), run in `dir`.
pub fn bin(dir: &Path) -> Command {
    let mut cmd = Command::new(program());
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .current_dir(dir);
    cmd
}

/// [`bin`] with `--config config --once`.
pub fn once(dir: &Path, config: &Path) -> Command {
    let mut cmd = bin(dir);
    cmd.arg("--config").arg(config).arg("--once");
    cmd
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Makes `cmd` run as `nobody` when the suite runs as root, because root ignores file
/// permissions and a "read-only" test would otherwise prove nothing. Paths the child needs
/// must be reachable by that user: see [`open_up`].
pub fn unprivileged(cmd: &mut Command) -> &mut Command {
    if is_root() {
        // std drops the supplementary groups before setuid when running as root.
        cmd.gid(NOBODY).uid(NOBODY);
    }
    cmd
}

/// Sets the permission bits of `path`.
pub fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {mode:o} {}: {e}", path.display()));
}

/// Lets other users list `dir` (temp dirs are created 0700), and fails loudly if a
/// directory above it is out of their reach.
pub fn open_up(dir: &Path) {
    let mode = std::fs::metadata(dir).unwrap().permissions().mode();
    chmod(dir, mode | 0o755);
    assert!(
        traversable(dir),
        "a directory above {} is not traversable by other users; the unprivileged tests \
         cannot work there",
        dir.display()
    );
}

/// Limits the size of any file the child writes to `bytes`, with `SIGXFSZ` ignored so a
/// write past the limit fails with `EFBIG` (what SQLite reports as a full disk) instead of
/// killing the process.
pub fn file_size_limit(cmd: &mut Command, bytes: u64) -> &mut Command {
    // SAFETY: the closure runs between fork and exec and calls only setrlimit and signal,
    // both async-signal-safe; an ignored disposition survives exec.
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: bytes as libc::rlim_t,
                rlim_max: bytes as libc::rlim_t,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::signal(libc::SIGXFSZ, libc::SIG_IGN) == libc::SIG_ERR {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

pub fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts exit status 1 and exactly one fatal line on stderr (log lines may surround it
/// when logging is turned up) containing every `needle`; returns that line.
pub fn assert_fatal(out: &Output, needles: &[&str]) -> String {
    let err = stderr(out);
    assert_eq!(
        out.status.code(),
        Some(1),
        "exit status; stdout {:?}, stderr {err:?}",
        stdout(out)
    );
    let fatal: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("konbini-reconciler: error: "))
        .collect();
    assert_eq!(fatal.len(), 1, "one fatal line: {err:?}");
    let line = fatal[0].to_owned();
    for n in needles {
        assert!(line.contains(n), "{n:?} missing from {line:?}");
    }
    for bad in ["panicked", "RUST_BACKTRACE", "stack backtrace"] {
        assert!(!err.contains(bad), "{err}");
    }
    line
}

/// Every file below `dir` (recursively) with its bytes.
pub fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let bytes = std::fs::read(&p).unwrap_or_default();
                out.insert(p, bytes);
            }
        }
    }
    out
}

/// Asserts two snapshots are equal, naming the first file that differs.
pub fn assert_same(before: &BTreeMap<PathBuf, Vec<u8>>, after: &BTreeMap<PathBuf, Vec<u8>>) {
    let names = |s: &BTreeMap<PathBuf, Vec<u8>>| s.keys().cloned().collect::<Vec<_>>();
    assert_eq!(names(before), names(after), "files appeared or vanished");
    for (p, b) in before {
        assert!(after[p] == *b, "{} changed", p.display());
    }
}

/// `PRAGMA integrity_check` on `db` (opened read-write, so a leftover WAL is recovered).
pub fn assert_integrity(db: &Path) {
    let conn = rusqlite::Connection::open(db).unwrap();
    let result: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(result, "ok", "{}", db.display());
}
