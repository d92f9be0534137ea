//! `fan-client`: the command line of the fan agent.
//!
//! `fan-client [--agent TARGET] [-o table|json] [--timeout SECONDS] COMMAND`.
//! See `fan-client --help` and the crate README for every command, the JSON
//! shapes and the exit codes.

mod cli;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::args::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fan-client: cannot start the async runtime: {e} (INTERNAL)");
            return ExitCode::from(1);
        }
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let result = runtime.block_on(cli::run(cli, &mut out));
    let _ = out.flush();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // A closed stdout (`fan-client … | head`) is not an error worth a line.
            if err
                .downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
            {
                return ExitCode::SUCCESS;
            }
            let (code, line) = cli::error::report(&err);
            eprintln!("{line}");
            ExitCode::from(code as u8)
        }
    }
}
