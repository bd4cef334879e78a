//! The `ssl-lang` binary: tune the allocator, install the signal handler, parse the command line, run it.

use clap::Parser;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

fn main() -> std::process::ExitCode {
    ssl_lang::commands::alloc::retain_freed_memory();
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    // SIGINT, SIGTERM and SIGHUP ask training to checkpoint and stop at the next step; a second one ends the process
    // at once (every file of a run is replaced atomically, so nothing is torn). Without a handler (it can fail only
    // if one is installed already) they keep their default action.
    let _ = ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            std::process::exit(i32::from(ssl_lang::commands::train::INTERRUPTED));
        }
    });
    ssl_lang::cli::run(ssl_lang::cli::Cli::parse(), stop)
}
