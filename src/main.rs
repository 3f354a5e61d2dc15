//! The `lameduck` command: parse the arguments, load the config without binding anything,
//! set up logging, run the daemon, and turn its outcome into the exit status
//! (0 drained, 1 start-up, config or command-line error, 2 the deadline or a second signal cut
//! connections). The helper subcommands (`probe`, `wait-drained`) live in [`lameduck::probe`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use lameduck::logging::{self, LogFormat};
use lameduck::probe;
use lameduck::systemd::Inherited;
use lameduck::Config;

/// A reverse proxy that gives backends without graceful shutdown a proper lame-duck mode.
#[derive(Debug, Parser)]
#[command(version, about, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// The configuration file.
    #[arg(long, env = "LAMEDUCK_CONFIG", default_value = "proxy.toml")]
    config: PathBuf,
    /// Validate the configuration, print `ok` or every error, and exit (0 or 1). Binds nothing.
    #[arg(short = 't', long)]
    check: bool,
    /// Log line format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Log level or filter, e.g. `info`, `debug`, or `info,lameduck::access=off` [default:
    /// $RUST_LOG, else info]
    #[arg(long)]
    log_level: Option<String>,
}

/// Helpers for containers; running the proxy needs no subcommand.
#[derive(Debug, Subcommand)]
enum Command {
    /// GET an http:// URL: exit 0 on a 2xx answer, else 1 saying why (a health check without
    /// curl)
    ///
    /// One HTTP/1.1 GET; one line on stdout (0) or stderr (1). For a container HEALTHCHECK or
    /// a Kubernetes exec probe: `lameduck probe http://127.0.0.1:9901/healthz`.
    Probe {
        /// `http://host[:port]/path`.
        url: String,
        /// Give up (exit 1) after this long, connect and answer included.
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
    /// Wait until lameduck has drained and exited (its admin address refuses connections)
    ///
    /// Tries the admin address every 100 ms; exits 0 once connections are refused, or 1 at the
    /// timeout. lameduck keeps its admin listener open until it exits, so a refused connect
    /// means its drain is over; nothing listening at all also returns at once. For a
    /// Kubernetes preStop hook on the legacy app's container, so that the app gets SIGTERM
    /// only after lameduck has drained.
    WaitDrained {
        /// lameduck's `[admin] addr`.
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: SocketAddr,
        /// Give up (exit 1) after this long.
        #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
}

/// mimalloc: measurably cheaper than the system allocator for hyper's many small
/// per-request allocations (see bench/RESULTS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // `--help` and `--version` exit 0; every usage error exits 1, not clap's 2, which
            // the unit's `SuccessExitStatus=2` would count as a clean drain.
            let _ = e.print();
            return ExitCode::from(u8::from(e.use_stderr()));
        }
    };
    if let Some(command) = cli.command {
        return helper(command);
    }
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
    if let Err(e) = logging::init(cli.log_format, cli.log_level.as_deref()) {
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

/// `probe` and `wait-drained`: one line on stdout and 0, or one line on stderr and 1.
fn helper(command: Command) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("lameduck: runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let outcome = match command {
        Command::Probe { url, timeout } => runtime
            .block_on(probe::probe(&url, timeout))
            .map(|ok| format!("{url}: {ok}"))
            .map_err(|e| format!("{url}: {e}")),
        Command::WaitDrained { admin, timeout } => runtime
            .block_on(probe::wait_drained(admin, timeout, probe::WAIT_EVERY))
            .map(|waited| {
                format!(
                    "drained: {admin} refuses connections (waited {})",
                    humantime::format_duration(Duration::from_millis(waited.as_millis() as u64))
                )
            })
            .map_err(|e| e.to_string()),
    };
    match outcome {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(line) => {
            eprintln!("{line}");
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
