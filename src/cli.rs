//! The command line: the clap definitions `main` parses, and what is generated from them —
//! the man page and the shell completions (`lameduck generate man | completions SHELL`).
//!
//! The operator's reference beyond the options — signals, exit statuses, files, the admin
//! endpoints, the environment — is written once, in [`REFERENCE`], and shown both at the end
//! of `--help` and as sections of the man page, so the two cannot drift apart.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use roff::{bold, roman, Roff};

use crate::logging::LogFormat;

/// `lameduck 0.1.0 (abc1234)`: the package version and, when built from git, the commit
/// (see `build.rs`). For `--version` and the metrics' build info.
pub const VERSION_LONG: &str = env!("LAMEDUCK_VERSION_LONG");

/// The git commit the binary was built from (7 hex digits), empty when built outside git.
pub const GIT_COMMIT: &str = env!("LAMEDUCK_GIT_COMMIT");

/// The man page's name and section: `lameduck(8)`, a daemon run by the administrator.
pub const MAN_PAGE: (&str, &str) = ("lameduck", "8");

/// A reverse proxy that gives backends without graceful shutdown a proper lame-duck mode.
///
/// It forwards HTTP/1.1, HTTP/2 and WebSocket traffic to the upstreams of its configuration.
/// On SIGTERM it stops accepting, answers new requests with 503 and Retry-After, lets
/// requests in flight finish, closes WebSocket tunnels with a close handshake, and exits the
/// moment its last connection is gone, or at the drain deadline.
#[derive(Debug, Parser)]
#[command(
    name = "lameduck",
    version = VERSION_LONG,
    about,
    long_about,
    args_conflicts_with_subcommands = true,
    after_help = "Signals, exit statuses, files and admin endpoints: lameduck --help (or man 8 lameduck).",
    after_long_help = reference_text(),
)]
pub struct Cli {
    /// A helper command instead of the proxy.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// The configuration file.
    #[arg(long, env = "LAMEDUCK_CONFIG", default_value = "proxy.toml")]
    pub config: PathBuf,
    /// Validate the configuration and the rest of the command line, print `ok` or every error,
    /// and exit (0 or 1). Binds nothing.
    #[arg(short = 't', long)]
    pub check: bool,
    /// Log line format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Log level or filter, e.g. `info`, `debug`, or `info,lameduck::access=off` [default:
    /// $RUST_LOG, else info]
    #[arg(long)]
    pub log_level: Option<String>,
}

/// Helpers for containers and packagers; running the proxy needs no subcommand.
#[derive(Debug, Subcommand)]
pub enum Command {
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
    /// Write the man page or a shell completion script to stdout
    ///
    /// `lameduck generate man > lameduck.8`;
    /// `lameduck generate completions bash > /usr/share/bash-completion/completions/lameduck`.
    Generate {
        #[command(subcommand)]
        what: Generate,
    },
}

/// What `lameduck generate` writes.
#[derive(Debug, Subcommand)]
pub enum Generate {
    /// The man page, lameduck(8), in roff
    Man,
    /// A completion script for SHELL
    Completions {
        /// The shell.
        shell: Shell,
    },
}

/// The shells `generate completions` writes for.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Shell {
    /// bash (bash-completion)
    Bash,
    /// zsh
    Zsh,
    /// fish
    Fish,
}

/// One section of the operator's reference: a heading and its entries (term, what it means).
pub struct Section {
    /// Upper case, as in a man page.
    pub heading: &'static str,
    /// `(term, description)`; the description is one paragraph.
    pub entries: &'static [(&'static str, &'static str)],
}

/// Signals, exit statuses, files, admin endpoints and environment, for `--help` and the man
/// page alike.
pub const REFERENCE: &[Section] = &[
    Section {
        heading: "SIGNALS",
        entries: &[
            ("SIGTERM, SIGINT", "Drain: after [drain] grace (serving normally, /readyz 503) stop accepting, answer new requests 503 with Retry-After, let requests in flight finish, close WebSocket tunnels with a close handshake, and exit when the last connection is gone, or at [drain] deadline."),
            ("second SIGTERM or SIGINT", "Cut every connection at once and exit 2."),
            ("SIGHUP", "Reload the configuration, certificates and keys in place; open connections keep going. A configuration that fails the check changes nothing and is logged (\"reload failed\")."),
            ("SIGUSR2", "Binary upgrade: start the binary on disk again with the listening sockets, and drain this process once the new one is ready. Refused as PID 1, under a container init and with supervised backends."),
            ("SIGUSR1", "Restart every supervised backend ([upstream.NAME.process]) without losing a request: pause, stop, start, resume."),
        ],
    },
    Section {
        heading: "EXIT STATUS",
        entries: &[
            ("0", "Clean drain: everything finished before the deadline (and --check, probe, wait-drained, generate succeeded)."),
            ("1", "Start-up, configuration or command-line error; nothing was bound."),
            ("2", "The drain deadline or a second signal cut connections."),
            ("3", "A supervised backend died with restart = \"never\" (lameduck drained first)."),
        ],
    },
    Section {
        heading: "FILES",
        entries: &[
            ("proxy.toml", "The configuration, in the working directory unless --config or LAMEDUCK_CONFIG names another; /etc/lameduck/proxy.toml under the shipped systemd unit. Relative paths in it resolve against its directory."),
            ("lameduck.service, lameduck.socket", "The systemd units: notify readiness, socket activation, the fd store, ExecStartPre= and ExecReload= run lameduck --check first."),
        ],
    },
    Section {
        heading: "ADMIN ENDPOINTS",
        entries: &[
            ("GET /healthz", "200 while the process runs."),
            ("GET /readyz", "200 while serving; 503 from the drain signal on (load balancers take it out of rotation)."),
            ("GET /metrics", "Prometheus text: connections, requests, tunnels, drain, upstreams."),
            ("GET /upstreams", "JSON: each upstream's state (serving, paused), requests in flight and held, addresses, supervised process."),
            ("POST /upstreams/NAME/pause", "Hold new requests to NAME; answers once nothing is in flight to it (?timeout=30s, ?expire=, ?addr=IP:PORT for one address)."),
            ("POST /upstreams/NAME/resume", "Send the held requests, oldest first (?addr=IP:PORT)."),
            ("POST /upstreams/NAME/restart", "Restart a supervised backend without losing a request."),
        ],
    },
    Section {
        heading: "ENVIRONMENT",
        entries: &[
            ("LAMEDUCK_CONFIG", "The configuration file when --config is not given."),
            ("NOTIFY_SOCKET, WATCHDOG_USEC, LISTEN_FDS", "Set by systemd: readiness and status notifications, the watchdog, socket activation."),
        ],
    },
];

/// [`REFERENCE`] as plain text for the end of `--help`.
fn reference_text() -> String {
    let mut text = String::new();
    for section in REFERENCE {
        let heading = section.heading.to_lowercase();
        let mut heading = heading.chars();
        let first = heading.next().map(|c| c.to_uppercase().to_string()).unwrap_or_default();
        text.push_str(&format!("{first}{}:\n", heading.as_str()));
        for (term, description) in section.entries {
            text.push_str(&format!("  {term}\n          {description}\n"));
        }
        text.push('\n');
    }
    text.push_str("The man page, lameduck(8), has the same: lameduck generate man | man -l -");
    text
}

/// Writes the man page to `out`: clap's sections (name, synopsis, description, options,
/// commands), then [`REFERENCE`], then the version.
pub fn write_man_page(out: &mut dyn Write) -> io::Result<()> {
    let man = clap_mangen::Man::new(Cli::command()).section(MAN_PAGE.1).manual("System Manager's Manual");
    man.render_title(out)?;
    man.render_name_section(out)?;
    man.render_synopsis_section(out)?;
    man.render_description_section(out)?;
    man.render_options_section(out)?;
    man.render_subcommands_section(out)?;
    let mut roff = Roff::new();
    for section in REFERENCE {
        roff.control("SH", [section.heading]);
        for (term, description) in section.entries {
            roff.control("TP", []);
            roff.text([bold(*term)]);
            roff.text([roman(*description)]);
        }
    }
    roff.control("SH", ["SEE ALSO"]);
    roff.text([roman("systemd.service(5), systemd.socket(5), sd_notify(3); README.md and proxy.toml in /usr/share/doc/lameduck/.")]);
    roff.to_writer(out)?;
    man.render_version_section(out)
}

/// Writes the completion script for `shell` to `out`.
pub fn write_completions(shell: Shell, out: &mut dyn Write) {
    let shell = match shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    clap_complete::generate(shell, &mut Cli::command(), MAN_PAGE.0, out);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn man_page_has_the_reference_sections_and_every_option() {
        let mut page = Vec::new();
        write_man_page(&mut page).expect("write to a Vec");
        let page = String::from_utf8(page).expect("roff is text");
        assert!(page.contains("\n.TH lameduck 8 "), "{}", &page[..200.min(page.len())]);
        for heading in ["SYNOPSIS", "OPTIONS", "SIGNALS", "EXIT STATUS", "FILES", "ADMIN ENDPOINTS"] {
            assert!(
                page.contains(&format!(".SH \"{heading}\"")) || page.contains(&format!(".SH {heading}")),
                "no {heading}:\n{page}"
            );
        }
        for word in [
            "\\-\\-check",
            "\\-\\-log\\-level",
            "SIGUSR2",
            "/upstreams/NAME/pause",
            "probe",
            "wait\\-drained",
        ] {
            assert!(page.contains(word), "the man page lacks {word}:\n{page}");
        }
    }

    #[test]
    fn completions_name_the_options_for_every_shell() {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let mut script = Vec::new();
            write_completions(shell, &mut script);
            let script = String::from_utf8(script).expect("text");
            assert!(script.contains("log-level") && script.contains("wait-drained"), "{shell:?}:\n{script}");
        }
    }
}
