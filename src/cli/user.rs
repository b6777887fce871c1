//! `tern user add|passwd|del`: edits the users file (atomically); a running server
//! notices the change by itself.

use crate::config::Config;
use crate::policy::users::{self, Change};
use std::io::BufRead;
use std::process::ExitCode;

/// Reads the password: one line from standard input, or twice at a prompt.
fn password(from_stdin: bool) -> Result<String, String> {
    if from_stdin {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line).map_err(|e| e.to_string())?;
        return Ok(line.trim_end_matches(['\r', '\n']).to_string());
    }
    let first = rpassword::prompt_password("Password: ").map_err(|e| e.to_string())?;
    let again = rpassword::prompt_password("Again: ").map_err(|e| e.to_string())?;
    if first != again {
        return Err("the passwords differ".into());
    }
    Ok(first)
}

pub fn set(config: &Config, address: &str, from_stdin: bool, must_exist: bool) -> ExitCode {
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
