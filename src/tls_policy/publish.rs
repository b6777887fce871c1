//! The MTA-STS policy Tern publishes for its own domains (`[mta_sts]`), served at
//! `https://mta-sts.<domain>/.well-known/mta-sts.txt` by the HTTPS listener, and the
//! DNS records that announce it and ask for TLS reports.

use crate::config::Config;

/// The policy text (RFC 8461 §3.2: one `key: value` a line, CRLF line ends) and its
/// id: the first 16 hex digits of its SHA-256, so that the id changes with the text.
pub fn policy(config: &Config) -> Option<(String, String)> {
    let sts = config.mta_sts.as_ref()?;
    let mut text = format!("version: STSv1\r\nmode: {}\r\n", sts.mode.name());
    let hostname = [config.hostname.clone()];
    let mx = if sts.mx.is_empty() { &hostname[..] } else { &sts.mx[..] };
    for host in mx {
        text.push_str(&format!("mx: {}\r\n", host.trim_end_matches('.').to_ascii_lowercase()));
    }
    text.push_str(&format!("max_age: {}\r\n", sts.max_age.as_secs()));
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, text.as_bytes());
    let id: String = digest.as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect();
    Some((text, id))
}

/// The local domain whose policy host is `host` (`mta-sts.<domain>`), if any.
pub fn domain_of_policy_host<'a>(config: &'a Config, host: &str) -> Option<&'a str> {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let domain = host.strip_prefix("mta-sts.")?;
    config.local.domains.iter().map(String::as_str).find(|d| d.trim_end_matches('.').eq_ignore_ascii_case(domain))
}

/// The TXT records to publish for `domain`: `_mta-sts.<domain>` (RFC 8461 §3.1) and
/// `_smtp._tls.<domain>` (RFC 8460 §3), reports to its postmaster. Empty without
/// `[mta_sts]`.
pub fn records(config: &Config, domain: &str) -> Vec<(String, String)> {
    let Some((_, id)) = policy(config) else { return Vec::new() };
    let domain = domain.trim_end_matches('.');
    vec![
        (format!("_mta-sts.{domain}"), format!("v=STSv1; id={id}")),
        (format!("_smtp._tls.{domain}"), format!("v=TLSRPTv1; rua=mailto:postmaster@{domain}")),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Config {
        let text = format!("hostname = \"mx.example.test\"\n[local]\ndomains = [\"example.test\"]\n{extra}");
        Config::parse(&text, "t.toml").unwrap()
    }

    #[test]
    fn the_policy_is_crlf_lines_with_max_age_in_seconds() {
        let c = config("[mta_sts]\nmode = \"enforce\"\nmax_age = \"7d\"\n");
        let (text, id) = policy(&c).unwrap();
        assert_eq!(text, "version: STSv1\r\nmode: enforce\r\nmx: mx.example.test\r\nmax_age: 604800\r\n");
        assert_eq!(id.len(), 16);
        assert!(id.chars().all(|c| c.is_ascii_hexdigit()));
        // The text parses as a policy with Tern's own reader.
        assert!(crate::tls_policy::mta_sts::parse_policy(&text).is_ok());
        let other = config("[mta_sts]\nmode = \"testing\"\nmx = [\"a.example.test\", \"*.b.example.test\"]\n");
        let (text2, id2) = policy(&other).unwrap();
        assert!(text2.contains("mode: testing\r\nmx: a.example.test\r\nmx: *.b.example.test\r\n"), "{text2}");
        assert_ne!(id, id2);
    }

    #[test]
    fn records_name_the_policy_id_and_the_postmaster() {
        let c = config("[mta_sts]\nmode = \"none\"\n");
        let (_, id) = policy(&c).unwrap();
        assert_eq!(
            records(&c, "example.test"),
            [
                ("_mta-sts.example.test".to_string(), format!("v=STSv1; id={id}")),
                ("_smtp._tls.example.test".to_string(), "v=TLSRPTv1; rua=mailto:postmaster@example.test".to_string()),
            ]
        );
        assert!(records(&config(""), "example.test").is_empty());
        assert_eq!(domain_of_policy_host(&c, "MTA-STS.Example.test"), Some("example.test"));
        assert_eq!(domain_of_policy_host(&c, "mta-sts.other.test"), None);
        assert_eq!(domain_of_policy_host(&c, "example.test"), None);
    }
}
