//! `tern reload`: the running server reads its configuration file again.

use super::control;
use crate::admin::ops::{Reloaded, Request};
use crate::config::Config;
use std::process::ExitCode;

pub fn reload(config: &Config) -> ExitCode {
    match control::ask::<Reloaded>(config, &Request::Reload) {
        Ok(answer) => {
            println!("{}", answer.reloaded);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tern: {e}");
            ExitCode::FAILURE
        }
    }
}
