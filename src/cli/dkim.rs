//! `tern dkim keygen`: makes a DKIM key, writes it as PEM with mode 0600 and prints
//! the DNS TXT record that publishes its public half.

use crate::config::{Config, DkimAlgorithm};
use crate::files::Access;
use crate::policy::dkim::key::KeyFile;
use crate::smtp::address::canonical_domain;
use chrono::Datelike;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The longest string of a TXT record (RFC 1035 §3.3); a resolver joins the strings.
const TXT_STRING_MAX: usize = 255;

pub fn keygen(
    config: &Config,
    domain: &str,
    selector: Option<&str>,
    algorithm: DkimAlgorithm,
    out: Option<PathBuf>,
) -> ExitCode {
    let Some(domain) = canonical_domain(domain) else {
        eprintln!("tern: {domain:?} is not a domain name");
        return ExitCode::from(2);
    };
    let selector = match selector {
        Some(s) => match canonical_domain(s) {
            Some(s) => s,
            None => {
                eprintln!("tern: selector {s:?} is not a DNS label");
                return ExitCode::from(2);
            }
        },
        None => format!("s{}", chrono::Utc::now().year()),
    };
    let path = match out {
        Some(p) => p,
        None => {
            // The data directory as the server makes it.
            let dir = config.data_dir.join("dkim");
            let made =
                crate::files::create_data_dir(config).and_then(|()| crate::files::create_dir(&dir, Access::PRIVATE));
            if let Err(e) = made {
                eprintln!("tern: cannot create {}: {e}", dir.display());
                return ExitCode::FAILURE;
            }
            dir.join(format!("{domain}.{selector}.pem"))
        }
    };
    let key = match KeyFile::generate(algorithm) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("tern: {e}");
            return ExitCode::FAILURE;
        }
    };
    let record = match key.dns_record() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tern: cannot publish the new key: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = write_new(&path, key.to_pem().as_bytes()) {
        eprintln!("tern: {e}");
        return ExitCode::FAILURE;
    }
    println!("{}", dkim_zone_line(&format!("{selector}._domainkey.{domain}."), &record));
    let shown = std::path::absolute(&path).unwrap_or(path);
    let key_value = toml::Value::String(shown.display().to_string());
    eprintln!(
        "Wrote the private key to {} (mode 0600).\n\
         Publish the TXT record printed above, then add this to the configuration:\n\n\
         [[dkim]]\ndomain = \"{domain}\"\nselector = \"{selector}\"\nkey = {key_value}\nalgorithm = \"{}\"",
        shown.display(),
        algorithm.name()
    );
    ExitCode::SUCCESS
}

/// Writes `contents` to a file that must not exist yet, readable by its owner only
/// from the moment it exists.
fn write_new(path: &Path, contents: &[u8]) -> Result<(), String> {
    let mut file = match crate::files::create_file(path, Access::PRIVATE, true) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(format!(
                "{} already exists; a key is never overwritten (remove it, or choose another --out or --selector)",
                path.display()
            ));
        }
        Err(e) => return Err(format!("cannot create {}: {e}", path.display())),
    };
    if let Err(e) = file.write_all(contents).and_then(|()| file.sync_all()) {
        drop(file);
        let _ = std::fs::remove_file(path);
        return Err(format!("cannot write {}: {e}", path.display()));
    }
    Ok(())
}

/// `NAME IN TXT ( "v=DKIM1; k=rsa; " "p=…" "…" )`: the tags before the key in one
/// string, the key in strings of at most 255 bytes.
pub(super) fn dkim_zone_line(name: &str, record: &str) -> String {
    let key_at = record
        .match_indices("p=")
        .map(|(i, _)| i)
        .find(|&i| i == 0 || record[..i].ends_with([';', ' ', '\t']))
        .unwrap_or(0);
    let (head, key) = record.split_at(key_at);
    let strings: Vec<String> = [head, key].into_iter().flat_map(txt_strings).map(quote).collect();
    format!("{name} IN TXT ( {} )", strings.join(" "))
}

/// TXT record text in zone-file form: one quoted string, or several in parentheses
/// when it is longer than one string may be.
pub(super) fn txt_value(text: &str) -> String {
    let strings: Vec<String> = txt_strings(text).into_iter().map(quote).collect();
    match strings.as_slice() {
        [] => "\"\"".to_string(),
        [one] => one.clone(),
        _ => format!("( {} )", strings.join(" ")),
    }
}

/// `text` cut into pieces of at most 255 bytes, at character boundaries.
fn txt_strings(mut text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    while text.len() > TXT_STRING_MAX {
        let mut cut = TXT_STRING_MAX;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        let (piece, rest) = text.split_at(cut);
        out.push(piece);
        text = rest;
    }
    if !text.is_empty() {
        out.push(text);
    }
    out
}

/// A zone-file character string (RFC 1035 §5.1).
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zone_lines_keep_strings_short() {
        let key = "A".repeat(392);
        let line = dkim_zone_line("s._domainkey.example.test.", &format!("v=DKIM1; k=rsa; p={key}"));
        assert_eq!(
            line,
            format!(
                "s._domainkey.example.test. IN TXT ( \"v=DKIM1; k=rsa; \" \"p={}\" \"{}\" )",
                &key[..253],
                &key[253..]
            )
        );
        assert_eq!(txt_value("v=spf1 mx -all"), "\"v=spf1 mx -all\"");
        assert_eq!(txt_value("a\"b"), "\"a\\\"b\"");
        assert_eq!(txt_strings(&"é".repeat(200)).iter().map(|s| s.len()).collect::<Vec<_>>(), [254, 146]);
    }
}
