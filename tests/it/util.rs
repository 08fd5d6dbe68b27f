//! The one way the tests launch the real binary, shared by both test binaries (`it`
//! declares this module; `crash.rs` includes the same file by path).
//!
//! Modelled on ripgrep's `TestCommand` (`tests/util.rs`): a [`TestCommand`] is the binary
//! with an empty environment (only `PATH`, so a developer's `RUST_LOG`, `UNIVAPAY_*` or
//! `KONBINI_RECONCILER_*` cannot leak in), run in a directory the test owns, with stdin
//! closed unless the test gives it bytes. [`TestCommand::run`] waits for it, within
//! [`RUN_LIMIT`], and returns a [`Finished`] with the assertions tests make on exit status,
//! stdout and stderr. [`TestCommand::spawn`] starts it as a [`Running`] child (a daemon,
//! or a pass to kill part-way) that is killed if the test lets go of it.
//!
//! Root ignores file modes, so a command can drop to `nobody`
//! ([`TestCommand::unprivileged`]) for permission tests to mean something, and can run
//! under a file-size limit ([`TestCommand::file_size_limit`]) to stand in for a full disk,
//! or under a service's umask ([`TestCommand::umask`]).

use std::ffi::{CString, OsStr};
use std::io::{Read, Write};
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The program's name, as its messages spell it and as `argv[0]`.
pub const BIN_NAME: &str = "konbini-reconciler";

/// The conventional `nobody` user and group.
pub const NOBODY: u32 = 65534;

/// How long [`TestCommand::run`] lets the binary take before failing the test: far beyond
/// any pass the tests run, there only so that a hung binary fails instead of hanging.
pub const RUN_LIMIT: Duration = Duration::from_secs(120);

/// The binary, by a path that `nobody` can execute too. Normally the build's own path;
/// when that lies under a directory other users cannot traverse (a checkout under a 0700
/// home, say), a descriptor of the file inherited by every child, executed through
/// `/proc/self/fd`, which does not walk the original directories.
fn program() -> PathBuf {
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
pub fn traversable(path: &Path) -> bool {
    path.ancestors()
        .skip(1)
        .all(|a| std::fs::metadata(a).is_ok_and(|m| m.permissions().mode() & 0o001 != 0))
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The binary, ready to be given arguments and run. See the module doc.
pub struct TestCommand {
    cmd: Command,
    stdin: Option<Vec<u8>>,
}

impl TestCommand {
    /// The binary with an empty environment (only `PATH`), run in `dir`.
    pub fn new(dir: &Path) -> TestCommand {
        let mut cmd = Command::new(program());
        // The same argv[0] whether the program is run by its path or through a descriptor.
        cmd.arg0(BIN_NAME)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .current_dir(dir);
        TestCommand { cmd, stdin: None }
    }

    /// The binary started the way systemd starts a socket-activated service: `listener`
    /// as descriptor 3 and `LISTEN_FDS=1`, with `LISTEN_PID` set by a shell to its own pid
    /// just before it execs the binary (which keeps that pid), or to `1` when
    /// `pid_matches` is false (a socket meant for another process).
    pub fn socket_activated(dir: &Path, listener: RawFd, pid_matches: bool) -> TestCommand {
        let program = program();
        assert!(
            !program.ends_with("fd/3"),
            "the binary's own descriptor is 3; it would be replaced by the socket"
        );
        let script = if pid_matches {
            r#"LISTEN_PID=$$; export LISTEN_PID; exec "$@""#
        } else {
            r#"LISTEN_PID=1; export LISTEN_PID; exec "$@""#
        };
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", script, "sh"])
            .arg(program)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("LISTEN_FDS", "1")
            .current_dir(dir);
        // SAFETY: between fork and exec only dup2 and fcntl, both async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                if listener != 3 && libc::dup2(listener, 3) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // dup2 gives a descriptor without FD_CLOEXEC; one already at 3 keeps its
                // flags, so clear them for the exec to pass it on.
                if libc::fcntl(3, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        TestCommand { cmd, stdin: None }
    }

    pub fn arg(&mut self, arg: impl AsRef<OsStr>) -> &mut Self {
        self.cmd.arg(arg);
        self
    }

    pub fn args<I, S>(&mut self, args: I) -> &mut Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.cmd.args(args);
        self
    }

    /// `--config path`.
    pub fn config(&mut self, path: &Path) -> &mut Self {
        self.cmd.arg("--config").arg(path);
        self
    }

    /// `--once`.
    pub fn once(&mut self) -> &mut Self {
        self.cmd.arg("--once");
        self
    }

    /// Adds one variable to the otherwise empty environment.
    pub fn env(&mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> &mut Self {
        self.cmd.env(key, value);
        self
    }

    /// Feeds `bytes` to the child's stdin, then closes it. Without this, stdin is closed.
    pub fn stdin(&mut self, bytes: impl Into<Vec<u8>>) -> &mut Self {
        self.stdin = Some(bytes.into());
        self
    }

    /// Runs the child as `nobody` when the suite runs as root, because root ignores file
    /// permissions and a "read-only" test would otherwise prove nothing. Paths the child
    /// needs must be reachable by that user (see `helpers::open_up`).
    pub fn unprivileged(&mut self) -> &mut Self {
        if is_root() {
            // std drops the supplementary groups before setuid when running as root.
            self.cmd.gid(NOBODY).uid(NOBODY);
        }
        self
    }

    /// Runs the child under the file-creation mask `mask`, as a service manager would
    /// (systemd's `UMask=`), whatever the test process's own umask is.
    pub fn umask(&mut self, mask: libc::mode_t) -> &mut Self {
        // SAFETY: the closure runs between fork and exec and calls only umask, which is
        // async-signal-safe and cannot fail.
        unsafe {
            self.cmd.pre_exec(move || {
                libc::umask(mask);
                Ok(())
            });
        }
        self
    }

    /// Limits the size of any file the child writes to `bytes`, with `SIGXFSZ` ignored so
    /// a write past the limit fails with `EFBIG` (what SQLite reports as a full disk)
    /// instead of killing the process.
    pub fn file_size_limit(&mut self, bytes: u64) -> &mut Self {
        // SAFETY: the closure runs between fork and exec and calls only setrlimit and
        // signal, both async-signal-safe; an ignored disposition survives exec.
        unsafe {
            self.cmd.pre_exec(move || {
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
            });
        }
        self
    }

    /// Runs the binary to its end, failing the test if that takes longer than
    /// [`RUN_LIMIT`].
    pub fn run(&mut self) -> Finished {
        self.spawn().wait(RUN_LIMIT)
    }

    /// Starts the binary as a child; its stdout and stderr are collected as it writes them
    /// (a chatty daemon never blocks on a full pipe).
    pub fn spawn(&mut self) -> Running {
        let what = std::iter::once(OsStr::new(BIN_NAME))
            .chain(self.cmd.get_args())
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ");
        let stdin = match self.stdin {
            Some(_) => Stdio::piped(),
            None => Stdio::null(),
        };
        let mut child = self
            .cmd
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        if let (Some(bytes), Some(mut pipe)) = (self.stdin.clone(), child.stdin.take()) {
            // A thread, so a child that reads nothing cannot block the test on a full pipe.
            std::thread::spawn(move || {
                let _ = pipe.write_all(&bytes);
            });
        }
        let stdout = collect(child.stdout.take().unwrap());
        let stderr = collect(child.stderr.take().unwrap());
        Running {
            child: Some(child),
            stdout: Some(stdout),
            stderr: Some(stderr),
            what,
        }
    }
}

/// Reads `pipe` to its end on a thread of its own.
fn collect(mut pipe: impl Read + Send + 'static) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        buf
    })
}

/// The binary running as a child of the test. Dropping it kills and reaps the child.
pub struct Running {
    /// `None` once reaped.
    child: Option<Child>,
    stdout: Option<JoinHandle<Vec<u8>>>,
    stderr: Option<JoinHandle<Vec<u8>>>,
    /// The command line, for messages.
    what: String,
}

impl Running {
    fn child(&mut self) -> &mut Child {
        self.child.as_mut().expect("not reaped yet")
    }

    /// The child's process id (while it runs).
    pub fn pid(&mut self) -> u32 {
        self.child().id()
    }

    /// Whether the child has exited (it is reaped then, and stays inspectable by
    /// [`wait`](Self::wait) or [`finish`](Self::finish)).
    pub fn has_exited(&mut self) -> bool {
        self.child().try_wait().unwrap().is_some()
    }

    /// Sends `sig` to the child, which must still be running (so the pid cannot have been
    /// reused).
    pub fn signal(&mut self, sig: libc::c_int) {
        assert!(
            !self.has_exited(),
            "{} exited before signal {sig}",
            self.what
        );
        let pid = self.child().id() as libc::pid_t;
        // SAFETY: kill(2) on the pid of a child this test spawned and has not reaped yet.
        assert_eq!(unsafe { libc::kill(pid, sig) }, 0, "kill({pid}, {sig})");
    }

    /// SIGKILL, no chance to clean up; returns what the child had written.
    pub fn kill(mut self) -> Finished {
        let _ = self.child().kill();
        let status = self.child().wait().unwrap();
        self.finished(status)
    }

    /// Waits for the child to exit, blocking the thread; fails the test after `limit`.
    pub fn wait(mut self, limit: Duration) -> Finished {
        let deadline = Instant::now() + limit;
        let mut pause = Duration::from_millis(1);
        loop {
            if let Some(status) = self.child().try_wait().unwrap() {
                return self.finished(status);
            }
            self.check_deadline(deadline, limit);
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(10));
        }
    }

    /// As [`wait`](Self::wait), without blocking the async runtime while the child runs.
    pub async fn finish(mut self, limit: Duration) -> Finished {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child().try_wait().unwrap() {
                return self.finished(status);
            }
            self.check_deadline(deadline, limit);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn check_deadline(&self, deadline: Instant, limit: Duration) {
        // The child is killed when `self` is dropped during the unwind.
        assert!(
            Instant::now() < deadline,
            "{} still running after {limit:?}",
            self.what
        );
    }

    fn finished(&mut self, status: ExitStatus) -> Finished {
        self.child = None;
        // The pipes close when the child exits, so these threads are done or about to be.
        let stdout = self.stdout.take().unwrap().join().unwrap();
        let stderr = self.stderr.take().unwrap().join().unwrap();
        Finished {
            status,
            stdout,
            stderr,
            what: std::mem::take(&mut self.what),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A finished run of the binary: its exit status and everything it wrote.
pub struct Finished {
    status: ExitStatus,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    what: String,
}

impl Finished {
    /// The exit code; `None` when a signal ended the process.
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    /// Stdout exactly as written, for searching bytes that are not text.
    pub fn stdout_bytes(&self) -> &[u8] {
        &self.stdout
    }

    /// Stderr exactly as written.
    pub fn stderr_bytes(&self) -> &[u8] {
        &self.stderr
    }

    /// Asserts the exit code, showing stdout and stderr when it is not `code`.
    pub fn assert_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code(),
            Some(code),
            "exit status of {}; stdout {:?}, stderr {:?}",
            self.what,
            self.stdout(),
            self.stderr()
        );
        self
    }

    /// Asserts exit status 1 and exactly one fatal line on stderr (log lines may surround
    /// it when logging is turned up) containing every `needle`, and no panic; returns that
    /// line.
    pub fn assert_fatal(&self, needles: &[&str]) -> String {
        self.assert_code(1);
        let err = self.stderr();
        let prefix = format!("{BIN_NAME}: error: ");
        let fatal: Vec<&str> = err.lines().filter(|l| l.starts_with(&prefix)).collect();
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
}
