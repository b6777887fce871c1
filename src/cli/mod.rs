//! The `tern` command line.

mod check;
mod cluster;
mod control;
mod dane;
mod dkim;
mod dns;
mod dns_bulk;
mod dns_tls;
mod mailq;
mod queue;
mod quickstart;
mod reload;
mod reports;
mod sendmail;
mod spf;
mod status;
mod user;

use crate::config::{Config, ConfigSource, DkimAlgorithm};
use crate::queue::Action;
use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "tern", version, about = "Tern: a durable, fast SMTP mail transfer agent")]
struct Cli {
    /// Configuration file (TOML); without it $TERN_CONFIG, else /etc/tern/tern.toml
    /// when it exists, else the embedded default.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the mail server.
    Serve {
        /// Log line format on stderr.
        #[arg(long, value_enum, default_value_t = LogFormat::Text)]
        log_format: LogFormat,
    },
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Inspect the mail queue.
    Queue {
        #[command(subcommand)]
        command: QueueCommand,
    },
    /// Aggregate reports (TLS-RPT and DMARC) of the running server.
    Reports {
        #[command(subcommand)]
        command: ReportsCommand,
    },
    /// Manage the users who may authenticate (the users file).
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// DKIM signing keys.
    Dkim {
        #[command(subcommand)]
        command: DkimCommand,
    },
    /// DANE: the TLSA record of the certificate Tern presents.
    Dane {
        #[command(subcommand)]
        command: DaneCommand,
    },
    /// DNS records of the domains Tern serves.
    Dns {
        #[command(subcommand)]
        command: DnsCommand,
    },
    /// Write a complete configuration for ADDRESS's domain (listeners on 25, 587 and
    /// 465, the user with a new password, a DKIM key) and print the DNS records to publish.
    Quickstart {
        address: String,
        /// The server's host name (MX target, HELO); default the machine's full name, or
        /// `mail.DOMAIN`.
        #[arg(long)]
        hostname: Option<String>,
        /// Where to write tern.toml.
        #[arg(long, value_name = "DIR", default_value = "/etc/tern")]
        dir: PathBuf,
        /// The data directory the configuration names.
        #[arg(long, value_name = "DIR", default_value = "/var/lib/tern")]
        data_dir: PathBuf,
    },
    /// Send mail like sendmail(1), with Postfix's flags (`tern sendmail --help`); the
    /// binary called `sendmail`, `mailq` or `newaliases` acts as this.
    #[command(disable_help_flag = true)]
    Sendmail {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
        args: Vec<String>,
    },
    /// What the running server says of itself: version, uptime, listeners, queue sizes.
    Status,
    /// Make the running server read its configuration file again.
    Reload,
    /// The nodes sharing a PostgreSQL database (`[cluster]`).
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Create the database schema, or bring it up to this version (a no-op when it is).
    Init,
    /// Every node: state, heartbeat, version, configuration, queue share and load.
    Status,
    /// Make NODE take no new deliveries; those under way finish.
    Drain {
        node: String,
        /// Undo a drain (the same as `resume`).
        #[arg(long)]
        undo: bool,
    },
    /// Let a drained NODE take deliveries again.
    Resume { node: String },
}

#[derive(Subcommand)]
enum DaneCommand {
    /// Print the TLSA record (`_25._tcp.HOST. IN TLSA 3 1 1 …`) pinning the listeners'
    /// certificate: usage 3 (DANE-EE), SHA-256 of its public key (or, with
    /// `--full-certificate`, of the whole certificate).
    Tlsa {
        /// The port in the record's name.
        #[arg(long, default_value_t = 25)]
        port: u16,
        /// Selector 0: match the whole certificate (changes at every renewal).
        #[arg(long)]
        full_certificate: bool,
    },
}

#[derive(Subcommand)]
enum DkimCommand {
    /// Make a new key (mode 0600) and print the DNS TXT record that publishes it.
    Keygen {
        domain: String,
        /// Selector; default `s` and the current year, like `s2026`.
        #[arg(long)]
        selector: Option<String>,
        #[arg(long, value_enum, default_value_t = KeyAlgorithm::Rsa)]
        algorithm: KeyAlgorithm,
        /// Where to write the key; default `<data_dir>/dkim/DOMAIN.SELECTOR.pem`.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum DnsCommand {
    /// Compare the MX, SPF, DKIM, DMARC, MTA-STS, TLS-RPT, TLSA and PTR records of a
    /// served domain with what DNS returns, and list what bulk senders are asked for.
    Check {
        domain: String,
        /// An address the server sends from (repeatable); default: those of `hostname`.
        #[arg(long = "address", value_name = "IP")]
        addresses: Vec<std::net::IpAddr>,
    },
    /// Evaluate SPF (RFC 7208) for a client as the server does at MAIL FROM: the
    /// result, and the explanation of a fail.
    Spf {
        /// The client's address.
        #[arg(long, required_unless_present = "stdin")]
        ip: Option<std::net::IpAddr>,
        /// The MAIL FROM address; without it, the HELO name is checked.
        #[arg(long, default_value = "")]
        mail_from: String,
        /// The HELO name (also `%{h}`).
        #[arg(long, default_value = "")]
        helo: String,
        /// Read queries as JSON lines ({"ip", "mail_from", "helo"}) and answer each with
        /// a JSON line ({"result", "explanation", "problem"}).
        #[arg(long, conflicts_with_all = ["ip", "mail_from", "helo"])]
        stdin: bool,
    },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Add a user (password from a prompt, or from standard input).
    Add {
        address: String,
        #[arg(long)]
        password_stdin: bool,
    },
    /// Change a user's password.
    Passwd {
        address: String,
        #[arg(long)]
        password_stdin: bool,
    },
    /// Remove a user.
    Del { address: String },
    /// List the users (addresses only).
    List,
}

#[derive(Subcommand)]
enum ReportsCommand {
    /// Send the reports of everything counted so far now.
    Send,
    /// Print what is counted, per kind, day and domain.
    Show {
        /// As JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate the configuration file and report the first error.
    Check,
    /// Print the embedded default configuration, commented, to start a file from.
    Default,
}

#[derive(Subcommand)]
enum QueueCommand {
    /// Show every queued message and the state of each recipient.
    List {
        /// As JSON, like `GET /api/v1/queue`.
        #[arg(long)]
        json: bool,
    },
    /// Show one message: envelope, each recipient's state, attempts and last reply.
    Show { id: String },
    /// Show a message's journey: received, stored, each attempt, final state (from the
    /// running server; kept for `[admin] trace_retention` after it left the queue).
    Trace { id: String },
    /// Retry deferred messages now (one, those a filter selects, or all).
    Flush {
        #[arg(conflicts_with_all = ["domain", "sender", "state", "older_than"])]
        id: Option<String>,
        #[command(flatten)]
        filter: queue::FilterArgs,
    },
    /// Put messages on hold: not attempted until released.
    Hold {
        #[arg(conflicts_with_all = ["domain", "sender", "state", "older_than"])]
        id: Option<String>,
        #[command(flatten)]
        filter: queue::FilterArgs,
    },
    /// Release messages on hold.
    Release {
        #[arg(conflicts_with_all = ["domain", "sender", "state", "older_than"])]
        id: Option<String>,
        #[command(flatten)]
        filter: queue::FilterArgs,
    },
    /// Remove a message from the queue.
    Delete {
        id: String,
        /// Tell the sender with a bounce.
        #[arg(long)]
        bounce: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum KeyAlgorithm {
    /// RSA, 2048 bits (rsa-sha256).
    Rsa,
    /// Ed25519 (ed25519-sha256, RFC 8463).
    Ed25519,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TERN_LOG")
        // rustls warns about clients (an illegal SNI) without naming them; what matters
        // reaches Tern as a handshake error, logged with the client.
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rustls=error"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(false).init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn load(source: &ConfigSource) -> Result<Config, ExitCode> {
    source.load().map_err(|e| {
        eprintln!("tern: {e}");
        ExitCode::from(2)
    })
}

pub fn main() -> ExitCode {
    if let Some(code) = sendmail::by_program_name() {
        return code;
    }
    let cli = Cli::parse();
    if let Command::Sendmail { args } = &cli.command {
        return sendmail::run(cli.config.as_deref(), args, None);
    }
    if let Command::Quickstart { address, hostname, dir, data_dir } = &cli.command {
        let options = quickstart::Options {
            address: address.clone(),
            hostname: hostname.clone(),
            dir: dir.clone(),
            data_dir: data_dir.clone(),
        };
        return quickstart::quickstart(&options);
    }
    if let Command::Config { command: ConfigCommand::Default } = &cli.command {
        print!("{}", crate::config::EMBEDDED_DEFAULT);
        return ExitCode::SUCCESS;
    }
    let source = ConfigSource::find(cli.config.as_deref());
    let config = match load(&source) {
        Ok(c) => c,
        Err(code) => return code,
    };
    match cli.command {
        Command::Serve { log_format } => serve(config, log_format, &source),
        Command::Reload => reload::reload(&config),
        Command::Reports { command: ReportsCommand::Send } => reports::send(&config),
        Command::Reports { command: ReportsCommand::Show { json } } => reports::show(&config, json),
        Command::Cluster { command } => match command {
            ClusterCommand::Init => cluster::init(&config),
            ClusterCommand::Status => cluster::status(&config),
            ClusterCommand::Drain { node, undo } => cluster::drain(&config, &node, !undo),
            ClusterCommand::Resume { node } => cluster::drain(&config, &node, false),
        },
        Command::Config { command: ConfigCommand::Check } => check::check(&config, &source),
        Command::User { command } => match command {
            UserCommand::Add { address, password_stdin } => user::set(&config, &address, password_stdin, false),
            UserCommand::Passwd { address, password_stdin } => user::set(&config, &address, password_stdin, true),
            UserCommand::Del { address } => user::del(&config, &address),
            UserCommand::List => user::list(&config),
        },
        Command::Queue { command } => match command {
            QueueCommand::List { json: false } => queue::list(&config),
            QueueCommand::List { json: true } => queue::list_json(&config),
            QueueCommand::Show { id } => queue::show(&config, &id),
            QueueCommand::Trace { id } => queue::trace(&config, &id),
            QueueCommand::Flush { id, filter } => queue::manage(&config, Action::Flush, id, filter),
            QueueCommand::Hold { id, filter } => queue::manage(&config, Action::Hold, id, filter),
            QueueCommand::Release { id, filter } => queue::manage(&config, Action::Release, id, filter),
            QueueCommand::Delete { id, bounce } => {
                let action = if bounce { Action::Bounce } else { Action::Delete };
                queue::manage(&config, action, Some(id), Default::default())
            }
        },
        Command::Status => status::status(&config),
        Command::Dkim { command: DkimCommand::Keygen { domain, selector, algorithm, out } } => {
            let algorithm = match algorithm {
                KeyAlgorithm::Rsa => DkimAlgorithm::RsaSha256,
                KeyAlgorithm::Ed25519 => DkimAlgorithm::Ed25519Sha256,
            };
            dkim::keygen(&config, &domain, selector.as_deref(), algorithm, out)
        }
        Command::Dane { command: DaneCommand::Tlsa { port, full_certificate } } => {
            let selector = if full_certificate { dane::Selector::Cert } else { dane::Selector::Spki };
            dane::tlsa(&config, port, selector)
        }
        Command::Dns { command: DnsCommand::Check { domain, addresses } } => dns::check(&config, &domain, &addresses),
        Command::Dns { command: DnsCommand::Spf { ip, mail_from, helo, stdin: _ } } => {
            spf::spf(&config, ip.map(|ip| (ip, mail_from, helo)))
        }
        Command::Sendmail { .. } | Command::Quickstart { .. } | Command::Config { command: ConfigCommand::Default } => {
            unreachable!("handled before the configuration is read")
        }
    }
}

fn serve(config: Config, log_format: LogFormat, source: &ConfigSource) -> ExitCode {
    init_logging(log_format);
    tracing::info!("configuration: {source}");
    // A full disk or a file size limit must surface as a write error, not kill the server.
    // A SIGHUP before the server catches it must not kill it either.
    // SAFETY: setting a signal disposition to SIG_IGN has no preconditions.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
    }
    raise_open_file_limit();
    // Logging is set up: the log line is the one place a fatal error is shown.
    let failed = |e: String| {
        tracing::error!("{e}");
        ExitCode::FAILURE
    };
    let lock = match crate::server::own_data_dir(&config) {
        Ok(lock) => lock,
        Err(e) => return failed(e),
    };
    // Whatever may need root happens before privileges are dropped, and the runtime's
    // threads start only after.
    let prepared = match crate::server::privileges::start_as_user(&config) {
        Ok(prepared) => prepared,
        Err(e) => return failed(e),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return failed(format!("cannot start runtime: {e}")),
    };
    let code = match runtime.block_on(crate::server::serve(config, source.path().map(PathBuf::from), prepared)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => failed(e),
    };
    // Tasks still holding the spool end with the runtime; only then may another server
    // take the data directory.
    drop(runtime);
    drop(lock);
    code
}

/// Every connection takes a file descriptor: use all the hard limit allows.
fn raise_open_file_limit() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed to them.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}
