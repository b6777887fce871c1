//! `tern user add|passwd|del|list`: edits the users file (atomically), or the
//! cluster's `users` table with `[auth] users = "database"`; a running server (every
//! node) notices the change by itself.

use crate::cluster::shared::users as table;
use crate::config::{Config, UsersSource};
use crate::policy::users::{self, Change};
use std::io::{BufRead, IsTerminal};
use std::process::ExitCode;

/// Reads the password: one line from standard input, or twice at a prompt.
fn password(from_stdin: bool) -> Result<String, String> {
    if from_stdin {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line).map_err(|e| e.to_string())?;
        return Ok(line.trim_end_matches(['\r', '\n']).to_string());
    }
    if !std::io::stdin().is_terminal() {
        return Err("no terminal: use --password-stdin".into());
    }
    let first = rpassword::prompt_password("Password: ").map_err(|e| e.to_string())?;
    let again = rpassword::prompt_password("Again: ").map_err(|e| e.to_string())?;
    if first != again {
        return Err("the passwords differ".into());
    }
    Ok(first)
}

/// A user must have an address of a local domain: the server receives its mail.
fn check_local(config: &Config, address: &str) -> Result<(), String> {
    let mailbox =
        crate::smtp::address::Mailbox::parse(address).map_err(|e| format!("{address:?} is not an address ({e})"))?;
    let domain = mailbox.canonical_domain();
    let canonical = crate::smtp::address::canonical_domain;
    if domain.is_some() && config.local.domains.iter().any(|d| canonical(d) == domain) {
        return Ok(());
    }
    Err(format!(
        "{} is not a local domain ([local] domains: {}): a user's address must be one this server receives mail for",
        mailbox.domain,
        config.local.domains.join(", ")
    ))
}

/// The users table exists only once `tern cluster init` made the schema.
async fn schema(cluster: &crate::cluster::Cluster) -> Result<(), String> {
    crate::cluster::migrations::check(cluster).await.map_err(|e| e.to_string())
}

fn in_database(config: &Config) -> bool {
    config.auth.users == UsersSource::Database
}

pub fn set(config: &Config, address: &str, from_stdin: bool, must_exist: bool) -> ExitCode {
    if !must_exist && let Err(e) = check_local(config, address) {
        eprintln!("tern: {e}");
        return ExitCode::FAILURE;
    }
    if in_database(config) {
        let password = match password(from_stdin) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("tern: {e}");
                return ExitCode::FAILURE;
            }
        };
        return super::cluster::with_cluster(config, |cluster| async move {
            schema(&cluster).await?;
            match table::set_password(&cluster, address, &password, must_exist).await? {
                Change::Added => println!("user {address} added to the cluster's database"),
                Change::Updated => println!("password of {address} changed in the cluster's database"),
            }
            Ok(())
        });
    }
    let path = config.users_file();
    // A users file in the data directory: make the directory as the server does.
    if path.starts_with(&config.data_dir)
        && let Err(e) = crate::files::create_data_dir(config)
    {
        eprintln!("tern: cannot create data directory {}: {e}", config.data_dir.display());
        return ExitCode::FAILURE;
    }
    let result = password(from_stdin).and_then(|pw| users::set_password(&path, address, &pw, must_exist));
    match result {
        Ok(Change::Added) => println!("user {address} added to {}", path.display()),
        Ok(Change::Updated) => println!("password of {address} changed in {}", path.display()),
        Err(e) => {
            eprintln!("tern: {e}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

pub fn del(config: &Config, address: &str) -> ExitCode {
    if in_database(config) {
        return super::cluster::with_cluster(config, |cluster| async move {
            schema(&cluster).await?;
            table::remove(&cluster, address).await?;
            println!("user {address} removed from the cluster's database");
            Ok(())
        });
    }
    let path = config.users_file();
    match users::remove(&path, address) {
        Ok(()) => {
            println!("user {address} removed from {}", path.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tern: {e}");
            ExitCode::FAILURE
        }
    }
}

pub fn list(config: &Config) -> ExitCode {
    if in_database(config) {
        return super::cluster::with_cluster(config, |cluster| async move {
            schema(&cluster).await?;
            let names = table::list(&cluster).await?;
            if names.is_empty() {
                eprintln!("no users in the cluster's database");
            }
            for name in names {
                println!("{name}");
            }
            Ok(())
        });
    }
    let path = config.users_file();
    match users::list(&path) {
        Ok(names) if names.is_empty() => {
            eprintln!("no users in {}", path.display());
            ExitCode::SUCCESS
        }
        Ok(names) => {
            for name in names {
                println!("{name}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tern: {e}");
            ExitCode::FAILURE
        }
    }
}
