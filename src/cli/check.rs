//! `tern config check`: the configuration as `serve` reads it, then what `serve` would
//! fail on (DKIM keys, the certificate and its key, a data directory it cannot write)
//! and what it would do that is most likely unmeant (warnings: an open relay, alias
//! targets that do not exist, `max_connections = 0`). Each finding names its key and
//! line.

use crate::config::{Config, ConfigSource, EMBEDDED_DEFAULT, line_of, path_key};
use crate::policy::LocalPolicy;
use crate::policy::users::Users;
use crate::smtp::address::{Mailbox, canonical_domain};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

pub fn check(config: &Config, source: &ConfigSource) -> ExitCode {
    let text = match source.path() {
        Some(path) => std::fs::read_to_string(path).unwrap_or_default(),
        None => EMBEDDED_DEFAULT.to_string(),
    };
    // `line N: key: text`, the line when the file has the key.
    let at = |key: &str, text_: String| match line_of(&text, key) {
        Some(line) => format!("line {line}: {key}: {text_}"),
        None => format!("{key}: {text_}"),
    };
    let mut errors = Vec::new();
    // The DKIM keys are read as `serve` reads them.
    if let Err(e) = crate::policy::dkim::Signer::load(&config.dkim) {
        errors.push(at("dkim", e));
    }
    if let (Some(cert), Some(key)) = (&config.tls.cert, &config.tls.key)
        && let Err(e) = crate::server::tls::check_files(cert, key)
    {
        errors.push(at("tls.cert", e));
    }
    if let Err(e) = writable(&config.data_dir) {
        errors.push(at("data_dir", e));
    }
    for warning in warnings(config) {
        let (key, message) = warning;
        eprintln!("tern: warning: {source}: {}", at(&key, message));
    }
    if !errors.is_empty() {
        for e in &errors {
            eprintln!("tern: {source}: {e}");
        }
        return ExitCode::from(2);
    }
    println!("{source}: configuration is valid");
    ExitCode::SUCCESS
}

/// Can files be made in `dir`, or in the directory `serve` would create it in?
fn writable(dir: &Path) -> Result<(), String> {
    let mut existing = dir;
    while !existing.exists() {
        match existing.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => existing = parent,
            _ => {
                existing = Path::new(".");
                break;
            }
        }
    }
    if !existing.is_dir() {
        return Err(format!("{} cannot be made: {} is not a directory", dir.display(), existing.display()));
    }
    let probe = existing.join(format!(".tern-check-{}", std::process::id()));
    match std::fs::OpenOptions::new().write(true).create_new(true).open(&probe) {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(e) if existing == dir => Err(format!("{} is not writable: {e}", dir.display())),
        Err(e) => Err(format!("{} cannot be made: {} is not writable: {e}", dir.display(), existing.display())),
    }
}

/// (key path, message) of what is valid but most likely a mistake.
fn warnings(config: &Config) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for net in config.relay.networks.iter().filter(|n| n.prefix_len() == 0) {
        out.push((
            "relay.networks".to_string(),
            format!("{net} lets every client on the Internet relay mail through this server (an open relay)"),
        ));
    }
    if config.limits.max_connections == 0 {
        out.push(("limits.max_connections".to_string(), "0 refuses every connection".to_string()));
    }
    let policy = LocalPolicy::new(config, Arc::new(Users::for_config(config)));
    for (from, targets) in &config.local.aliases {
        let domain = from.strip_prefix('@').and_then(crate::config::alias_domain);
        if domain
            .is_some_and(|d| !config.local.domains.iter().any(|l| canonical_domain(l).as_deref() == Some(d.as_str())))
        {
            out.push((
                format!("local.aliases.{}", path_key(from)),
                "catches nothing: the domain is not one of local.domains".to_string(),
            ));
        }
        for target in targets {
            let Ok(mailbox) = Mailbox::parse(target) else { continue };
            if policy.is_local(&mailbox) && policy.resolve(&mailbox).is_err() {
                out.push((
                    format!("local.aliases.{}", path_key(from)),
                    format!("{target} does not exist (not a user, an alias or a mailbox of [local] users)"),
                ));
            }
        }
    }
    out
}
