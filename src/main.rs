//! The `konbini-reconciler` binary: parse the command line, hand over to the library.

use std::process::ExitCode;

// A check allocates a few dozen small, short-lived objects (the answer's JSON, the
// decision, the log line) across threads; mimalloc's thread-local free lists make that
// markedly cheaper than glibc's allocator, which the benchmark measures per charge.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    match konbini_reconciler::app::parse_args(std::env::args_os()) {
        Ok(cli) => konbini_reconciler::app::main(cli),
        Err(code) => code,
    }
}
