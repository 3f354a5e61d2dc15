//! The `lameduck` command: parse the arguments, load the config without binding anything,
//! set up logging, run the daemon, and turn its outcome into the exit status
//! (0 drained, 1 start-up, config or command-line error, 2 the deadline or a second signal cut
//! connections). The helper subcommands (`probe`, `wait-drained`) live in [`lameduck::probe`].

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use lameduck::cli::{self, Cli, Command, Generate};
use lameduck::logging;
use lameduck::probe;
use lameduck::systemd::Inherited;
use lameduck::Config;

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
        return check(&cli.config, cli.log_level.as_deref());
    }
    let config = match Config::load(&cli.config) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{e}");
            inherited.report_to_predecessor(&format!("{e}\n"));
            return ExitCode::from(1);
        }
    };
    if let Err(e) = logging::init(cli.log_format, cli.log_level.as_deref(), &config.log.access) {
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

/// `probe` and `wait-drained`: one line on stdout and 0, or one line on stderr and 1;
/// `generate`: the man page or a completion script on stdout.
fn helper(command: Command) -> ExitCode {
    if let Command::Generate { what } = command {
        return generate(what);
    }
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
        Command::Generate { .. } => unreachable!("handled above"),
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

/// `generate man | completions SHELL`.
fn generate(what: Generate) -> ExitCode {
    let mut out = std::io::stdout().lock();
    let written = match what {
        Generate::Man => cli::write_man_page(&mut out),
        Generate::Completions { shell } => {
            cli::write_completions(shell, &mut out);
            Ok(())
        }
    };
    match written.and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: cannot write to stdout: {e}");
            ExitCode::from(1)
        }
    }
}

/// `--check`: `ok` on stdout (warnings on stderr) and 0, or every error on stderr and 1. The
/// log level (or `RUST_LOG`) is checked too: `ExecStart=` will use the same command line.
fn check(path: &Path, log_level: Option<&str>) -> ExitCode {
    if let Err(e) = logging::filter(log_level) {
        eprintln!("error: {e}");
        return ExitCode::from(1);
    }
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
