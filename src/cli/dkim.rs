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
    let made = match make_key(config, domain, selector, algorithm, out) {
        Ok(made) => made,
        Err((code, e)) => {
            eprintln!("tern: {e}");
            return code;
        }
    };
    println!("{}", made.zone_line);
    let key_value = toml::Value::String(made.path.display().to_string());
    eprintln!(
        "Wrote the private key to {} (mode 0600).\n\
         Publish the TXT record printed above, then add this to the configuration:\n\n\
         [[dkim]]\ndomain = \"{}\"\nselector = \"{}\"\nkey = {key_value}\nalgorithm = \"{}\"",
        made.path.display(),
        made.domain,
        made.selector,
        algorithm.name()
    );
    ExitCode::SUCCESS
}

/// A new key, written.
pub(super) struct NewKey {
    pub domain: String,
    pub selector: String,
    /// Where it was written, made absolute.
    pub path: PathBuf,
    /// The TXT record that publishes it, as a zone-file line.
    pub zone_line: String,
}

/// Makes a key and writes it (mode 0600) to `out` or `<data_dir>/dkim/DOMAIN.SELECTOR.pem`.
pub(super) fn make_key(
    config: &Config,
    domain: &str,
    selector: Option<&str>,
    algorithm: DkimAlgorithm,
    out: Option<PathBuf>,
) -> Result<NewKey, (ExitCode, String)> {
    let usage = |e: String| (ExitCode::from(2), e);
    let failed = |e: String| (ExitCode::FAILURE, e);
    let domain = canonical_domain(domain).ok_or_else(|| usage(format!("{domain:?} is not a domain name")))?;
    let selector = match selector {
        Some(s) => canonical_domain(s).ok_or_else(|| usage(format!("selector {s:?} is not a DNS label")))?,
        None => format!("s{}", chrono::Utc::now().year()),
    };
    let path = match out {
        Some(p) => p,
        None => {
            // The data directory as the server makes it.
            let dir = config.data_dir.join("dkim");
            crate::files::create_data_dir(config)
                .and_then(|()| crate::files::create_dir(&dir, Access::PRIVATE))
                .map_err(|e| failed(format!("cannot create {}: {e}", dir.display())))?;
            dir.join(format!("{domain}.{selector}.pem"))
        }
    };
    let key = KeyFile::generate(algorithm).map_err(failed)?;
    let record = key.dns_record().map_err(|e| failed(format!("cannot publish the new key: {e}")))?;
    write_new(&path, key.to_pem().as_bytes()).map_err(failed)?;
    let zone_line = dkim_zone_line(&format!("{selector}._domainkey.{domain}."), &record);
    let path = std::path::absolute(&path).unwrap_or(path);
    Ok(NewKey { domain, selector, path, zone_line })
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
