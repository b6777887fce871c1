//! The trace header added to every accepted message (RFC 5321 §4.4).

use super::local_submit::LocalUser;
use crate::smtp::session::Message;
use std::net::IpAddr;

/// `Received: from <helo> ([ip]) by <host> (Tern) with <protocol> id <id> for <rcpt>; <date>`;
/// for a local submission `Received: by <host> (Tern, from userid <uid> <login>) …`.
pub fn received_header(message: &Message, peer: IpAddr, hostname: &str, id: &str, local: Option<&LocalUser>) -> String {
    // RFC 3848 and RFC 6531 §3.7.3 name the protocol: ESMTP, then S for TLS and A
    // for AUTH (ESMTPSA), UTF8SMTP… when SMTPUTF8 was used.
    let base = match (message.hello.extended, message.params.smtputf8) {
        (false, _) => "SMTP",
        (true, false) => "ESMTP",
        (true, true) => "UTF8SMTP",
    };
    let mut protocol = base.to_string();
    if message.hello.extended && message.tls.is_some() {
        protocol.push('S');
    }
    if message.hello.extended && message.user.is_some() {
        protocol.push('A');
    }
    let tls = message.tls.as_ref().map(|t| format!("\r\n\t(using {t})")).unwrap_or_default();
    let ip = match peer {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("IPv6:{v6}"),
    };
    let helo: String = message.hello.name.chars().filter(|c| !c.is_control()).collect();
    // A single recipient is named; several are not (that would disclose the others).
    let recipient = match message.rcpts.as_slice() {
        [only] => format!("\r\n\tfor <{}>", only.to),
        _ => String::new(),
    };
    let date = chrono::Local::now().to_rfc2822();
    if let Some(local) = local {
        return format!(
            "Received: by {hostname} (Tern, from userid {} {})\r\n\twith {protocol} id {id}{recipient};\r\n\t{date}\r\n",
            local.uid, local.login
        );
    }
    format!(
        "Received: from {helo} ([{ip}]){tls}\r\n\tby {hostname} (Tern) with {protocol} id {id}{recipient};\r\n\t{date}\r\n"
    )
}
