//! DNS block and allow lists (RFC 5782), asked about each client of an `smtp`
//! listener before the greeting.
//!
//! A client at 192.0.2.99 is looked up as the A record of `99.2.0.192.<zone>`; an
//! IPv6 client by its 32 nibbles in reverse order (§2.4). An answer in 127.0.0.0/8
//! means "listed" (§2.1); answers outside it are ignored, and so are
//! 127.255.255.252 to 127.255.255.255, which lists such as Spamhaus use to say that
//! the query itself was refused (wrong zone, public resolver, too many queries).
//! Trouble with DNS never refuses a client: an unanswered list counts as "not listed".

use crate::dns::{Dns, DnsError};
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;
use tokio::task::JoinSet;
use tokio::time::{Instant, timeout_at};

/// How long all the lists together may take to answer.
pub const BUDGET: Duration = Duration::from_secs(5);

/// The judgement on one client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// On an allow list: skips the block lists and greylisting.
    Allowed { zone: String },
    /// On a block list: refused at connect. `txt` is the list's explanation, for the log.
    Blocked { zone: String, txt: Option<String> },
    /// On no list (or no list answered).
    Clean,
}

/// What one list said about one client.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Listing {
    Listed(Vec<Ipv4Addr>),
    NotListed,
}

/// The name to look up for `ip` in `zone` (RFC 5782 §2.1 and §2.4).
pub fn query_name(ip: IpAddr, zone: &str) -> String {
    let zone = zone.trim_end_matches('.');
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            format!("{d}.{c}.{b}.{a}.{zone}")
        }
        IpAddr::V6(v6) => {
            let mut name = String::with_capacity(64 + zone.len());
            for byte in v6.octets().iter().rev() {
                name.push(char::from_digit(u32::from(byte & 0x0f), 16).expect("nibble"));
                name.push('.');
                name.push(char::from_digit(u32::from(byte >> 4), 16).expect("nibble"));
                name.push('.');
            }
            name.push_str(zone);
            name
        }
    }
}

/// 127.255.255.252-255: the list refused to answer (Spamhaus's convention).
fn is_refusal(a: Ipv4Addr) -> bool {
    let [x, y, z, w] = a.octets();
    x == 127 && y == 255 && z == 255 && w >= 252
}

/// Reads the A records of a list's answer: listed when one of them is in 127/8 and
/// is not a refusal code.
fn classify(zone: &str, client: IpAddr, answers: Vec<Ipv4Addr>) -> Listing {
    let mut listed = Vec::new();
    for a in answers {
        if is_refusal(a) {
            tracing::warn!(%client, zone, answer = %a, "DNS list refused the query; answer ignored");
        } else if a.octets()[0] == 127 {
            listed.push(a);
        } else {
            tracing::warn!(%client, zone, answer = %a, "DNS list answer outside 127.0.0.0/8 ignored");
        }
    }
    if listed.is_empty() { Listing::NotListed } else { Listing::Listed(listed) }
}

/// Asks one list about `client`; every failure is "not listed".
async fn lookup(dns: Dns, zone: String, client: IpAddr, deadline: Instant) -> Listing {
    let name = query_name(client, &zone);
    match timeout_at(deadline, dns.a_records(&name)).await {
        Ok(Ok(answers)) => classify(&zone, client, answers),
        Ok(Err(DnsError::NoSuchDomain | DnsError::NoRecords)) => Listing::NotListed,
        Ok(Err(DnsError::Temporary(e))) => {
            tracing::warn!(%client, zone, error = %e, "DNS list lookup failed; client taken as not listed");
            Listing::NotListed
        }
        Err(_) => {
            tracing::warn!(%client, zone, "DNS list did not answer in time; client taken as not listed");
            Listing::NotListed
        }
    }
}

/// Asks every list at once, within [`BUDGET`]: an allow list wins over the block
/// lists; otherwise the first block list (in configuration order) that lists the
/// client decides, and its TXT record is fetched for the log.
pub async fn check(dns: &Dns, client: IpAddr, allow: &[String], block: &[String]) -> Verdict {
    if allow.is_empty() && block.is_empty() {
        return Verdict::Clean;
    }
    let deadline = Instant::now() + BUDGET;
    let zones: Vec<&String> = allow.iter().chain(block).collect();
    let mut set = JoinSet::new();
    for (i, zone) in zones.iter().enumerate() {
        let (dns, zone) = (dns.clone(), zone.to_string());
        set.spawn(async move { (i, lookup(dns, zone, client, deadline).await) });
    }
    let mut results = vec![Listing::NotListed; zones.len()];
    while let Some(joined) = set.join_next().await {
        if let Ok((i, listing)) = joined {
            results[i] = listing;
        }
    }
    let (allowed, blocked) = results.split_at(allow.len());
    if let Some(i) = allowed.iter().position(|l| matches!(l, Listing::Listed(_))) {
        tracing::info!(%client, zone = %allow[i], "client on a DNS allow list");
        return Verdict::Allowed { zone: allow[i].clone() };
    }
    let Some(i) = blocked.iter().position(|l| matches!(l, Listing::Listed(_))) else {
        return Verdict::Clean;
    };
    let zone = block[i].clone();
    let name = query_name(client, &zone);
    let txt = match timeout_at(deadline, dns.txt(&name)).await {
        Ok(Ok(texts)) if !texts.is_empty() => Some(texts.join(" ")),
        _ => None,
    };
    let codes = match &blocked[i] {
        Listing::Listed(codes) => codes.iter().map(Ipv4Addr::to_string).collect::<Vec<_>>().join(","),
        Listing::NotListed => String::new(),
    };
    tracing::info!(%client, zone, answer = codes, txt = txt.as_deref().unwrap_or(""), "client on a DNS block list");
    Verdict::Blocked { zone, txt }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_names_are_reversed() {
        let ip: IpAddr = "192.0.2.99".parse().unwrap();
        assert_eq!(query_name(ip, "bl.example"), "99.2.0.192.bl.example");
        assert_eq!(query_name(ip, "bl.example."), "99.2.0.192.bl.example");
        // An IPv4 client seen on an IPv6 socket is looked up as IPv4.
        let mapped: IpAddr = "::ffff:192.0.2.99".parse().unwrap();
        assert_eq!(query_name(mapped, "bl.example"), "99.2.0.192.bl.example");
    }

    #[test]
    fn ipv6_names_are_nibble_reversed() {
        // RFC 5782 §2.4's example.
        let ip: IpAddr = "2001:db8:1:2:3:4:567:89ab".parse().unwrap();
        assert_eq!(
            query_name(ip, "ugly.example.com"),
            "b.a.9.8.7.6.5.0.4.0.0.0.3.0.0.0.2.0.0.0.1.0.0.0.8.b.d.0.1.0.0.2.ugly.example.com"
        );
        let one: IpAddr = "::1".parse().unwrap();
        assert_eq!(query_name(one, "z").matches('.').count(), 32);
        assert!(query_name(one, "z").starts_with("1.0.0.0."));
    }

    #[test]
    fn only_127_answers_list_and_refusal_codes_do_not() {
        let client: IpAddr = "192.0.2.1".parse().unwrap();
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        assert_eq!(classify("z", client, vec![ip("127.0.0.2")]), Listing::Listed(vec![ip("127.0.0.2")]));
        assert_eq!(classify("z", client, vec![ip("10.0.0.2")]), Listing::NotListed);
        for refusal in ["127.255.255.252", "127.255.255.254", "127.255.255.255"] {
            assert_eq!(classify("z", client, vec![ip(refusal)]), Listing::NotListed, "{refusal}");
        }
        assert_eq!(
            classify("z", client, vec![ip("127.255.255.254"), ip("127.0.0.4"), ip("8.8.8.8")]),
            Listing::Listed(vec![ip("127.0.0.4")])
        );
        assert!(!is_refusal(ip("127.255.255.251")));
    }
}
