//! The `ssl-lang` binary: tune the allocator, install the signal handler, parse the command line, run it.

use clap::Parser;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

fn main() -> std::process::ExitCode {
    ssl_lang::commands::alloc::retain_freed_memory();
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    // SIGINT, SIGTERM and SIGHUP ask training to checkpoint and stop at the next step. Without a handler (it can fail
    // only if one is installed already) they keep their default action.
    let _ = ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst));
    ssl_lang::cli::run(ssl_lang::cli::Cli::parse(), stop)
}
