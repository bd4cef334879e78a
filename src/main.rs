//! The `ssl-lang` binary: parse the command line, run it.

use clap::Parser;

fn main() -> std::process::ExitCode {
    ssl_lang::runtime::alloc::retain_freed_memory();
    ssl_lang::cli::run(ssl_lang::cli::Cli::parse())
}
