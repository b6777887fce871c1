//! Tern: an SMTP mail transfer agent.

mod cli;
mod config;
mod delivery;
mod policy;
mod queue;
mod server;
mod smtp;
mod spool;

fn main() -> std::process::ExitCode {
    cli::main()
}
