//! `cargo bench --bench train [-- ARGS]`: the training-throughput benchmark, `ssl-lang bench train ARGS` run from
//! cargo (it trains in child processes of the `ssl-lang` binary, which cargo builds for benchmarks). For example
//! `cargo bench --bench train -- --steps 5 --baseline objectives/unigrad.ssl`.

use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    // cargo passes `--bench` to every benchmark binary; the rest is the user's.
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let status = Command::new(env!("CARGO_BIN_EXE_ssl-lang"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["bench", "train"])
        .args(&args)
        .status();
    match status {
        Ok(s) if s.success() => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("cannot run ssl-lang: {e}");
            ExitCode::FAILURE
        }
    }
}
