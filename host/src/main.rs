use std::io::IsTerminal;

use clap::Parser;
use corral::cli::LogFormat;
use tracing_subscriber::EnvFilter;

fn main() -> std::process::ExitCode {
    let cli = corral::cli::Cli::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Json => logs.json().with_current_span(true).init(),
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("corral: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(corral::cli::run(cli));
    // Blocking work still running (a compile, an inference run) must not hold the exit: the
    // drain timeout already bounded what the server waits for.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("corral: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
