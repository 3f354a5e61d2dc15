//! The `lameduck` command: parse the arguments, load the config without binding anything,
//! set up logging, run the daemon, and turn its outcome into the exit status
//! (0 drained, 1 start-up or config error, 2 the deadline or a second signal cut connections).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use lameduck::logging::{self, LogFormat};
use lameduck::systemd::Inherited;
use lameduck::Config;

/// A reverse proxy that gives backends without graceful shutdown a proper lame-duck mode.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// The configuration file.
    #[arg(long, env = "LAMEDUCK_CONFIG", default_value = "proxy.toml")]
    config: PathBuf,
    /// Validate the configuration, print `ok` or every error, and exit (0 or 1). Binds nothing.
    #[arg(long)]
    check: bool,
    /// Log line format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Log level or filter, e.g. `info`, `debug`, or `info,lameduck::access=off`.
    #[arg(long, default_value = "info")]
    log_level: String,
}

/// mimalloc: measurably cheaper than the system allocator for hyper's many small
/// per-request allocations (see bench/RESULTS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Before any thread exists: take the sockets systemd or a predecessor handed over.
    let mut inherited = match Inherited::take() {
        Ok(inherited) => inherited,
        Err(e) => {
            eprintln!("lameduck: {e}");
            return ExitCode::from(1);
        }
    };
    if cli.check {
        return check(&cli.config);
    }
    let config = match Config::load(&cli.config) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{e}");
            inherited.report_to_predecessor(&format!("{e}\n"));
            return ExitCode::from(1);
        }
    };
    if let Err(e) = logging::init(cli.log_format, &cli.log_level) {
        eprintln!("lameduck: {e}");
        return ExitCode::from(1);
    }
    match lameduck::run(config, inherited) {
        Ok(outcome) => ExitCode::from(outcome.exit_code() as u8),
        Err(e) => {
            tracing::error!(error = %e, cause = %error_chain(&e), "start-up failed");
            ExitCode::from(1)
        }
    }
}

/// `--check`: `ok` on stdout (warnings on stderr) and 0, or every error on stderr and 1.
fn check(path: &Path) -> ExitCode {
    match lameduck::check(path) {
        Ok(warnings) => {
            for warning in warnings {
                eprintln!("{warning}");
            }
            println!("ok");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(1)
        }
    }
}

/// The causes of `e`, outermost first, joined with ": ".
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut causes = Vec::new();
    let mut next = e.source();
    while let Some(cause) = next {
        causes.push(cause.to_string());
        next = cause.source();
    }
    causes.join(": ")
}
