//! Catch-all and domain aliases (`"@domain"` keys and targets in `[local.aliases]`),
//! as Postfix's virtual alias maps: swaks talks to the real server, the Maildirs show
//! where the mail went, and `tern config check` names a malformed entry.

mod common;

use common::*;
use std::fs;

const CONFIG: &str = r#"
[local]
domains = ["catch.test", "old.test", "new.test"]
users = ["alice@catch.test", "bob@new.test", "carol@new.test"]

[local.aliases]
"@catch.test" = ["alice@catch.test"]
"sales@catch.test" = ["carol@new.test"]
"@old.test" = ["@new.test"]
"#;

fn send(t: &Tern, to: &str, subject: &str) -> Out {
    t.swaks(&["-f", "sender@catch.test", "-t", to, "--header", &format!("Subject: {subject}")])
}

#[test]
fn catch_all_and_domain_alias_deliver_to_the_right_maildirs() {
    let t = Tern::start(&format!("{CONFIG}{NO_AUTH_CHECKS}"));
    // Unknown local parts of catch.test go to the catch-all; users and specific
    // aliases first (a subaddress is stripped before the catch-all is asked).
    send(&t, "nobody@catch.test", "caught").assert_success("swaks to an unknown local part");
    send(&t, "Alice+tag@catch.test", "own").assert_success("swaks to a user");
    send(&t, "sales@catch.test", "specific").assert_success("swaks to an alias");
    // old.test is new.test under another name: the local part is kept.
    send(&t, "bob+x@old.test", "renamed").assert_success("swaks through the domain alias");

    let alice = t.wait_mail("catch.test", "alice", 2);
    let subjects = |mail: &[Vec<u8>]| {
        let mut s: Vec<String> = mail
            .iter()
            .map(|m| {
                let text = String::from_utf8_lossy(m);
                text.lines().find_map(|l| l.strip_prefix("Subject: ")).unwrap_or_default().to_string()
            })
            .collect();
        s.sort();
        s
    };
    assert_eq!(subjects(&alice), ["caught", "own"]);
    assert_eq!(subjects(&t.wait_mail("new.test", "carol", 1)), ["specific"]);
    let bob = t.wait_mail("new.test", "bob", 1);
    assert_eq!(subjects(&bob), ["renamed"]);
    assert!(contains(&bob[0], b"Delivered-To: bob@new.test\r\n"), "{}", show(&bob[0]));
    for (domain, user) in [("catch.test", "nobody"), ("catch.test", "sales"), ("old.test", "bob")] {
        assert!(!t.maildir(domain, user).exists(), "{user}@{domain} got a Maildir of its own");
    }

    // A domain alias to a domain without that user is refused at RCPT.
    let out = send(&t, "dave@old.test", "nowhere");
    assert!(!out.success(), "{}", out.all());
    assert!(out.all().contains("550 5.1.1"), "{}", out.all());
}

#[test]
fn config_check_names_malformed_alias_entries() {
    let t = Tern::new_stopped("", &[]);
    for (entry, said) in [
        ("\"@\" = [\"a@catch.test\"]", "local.aliases.\"@\": \"@\" needs a domain after it"),
        ("\"@catch.test\" = [\"@not a domain\"]", "local.aliases.\"@catch.test\"[0]: \"@not a domain\""),
    ] {
        let config = t.path().join("bad.toml");
        let text = fs::read_to_string(&t.config_path).unwrap();
        fs::write(&config, format!("{text}\n[local]\ndomains = [\"catch.test\"]\n[local.aliases]\n{entry}\n")).unwrap();
        let mut cmd = std::process::Command::new(TERN_BIN);
        cmd.args(["config", "check", "--config"]).arg(&config);
        let out = run(cmd, CLIENT_TIMEOUT);
        assert!(!out.success(), "{entry} accepted: {}", out.all());
        assert!(out.all().contains(said), "{entry}: {}", out.all());
        assert!(out.all().contains("line "), "no line named: {}", out.all());
    }
}
