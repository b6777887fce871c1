//! Interoperability with other mail software: Postfix's smtp-source as a
//! sender, Dovecot reading Tern's Maildirs.

mod common;

use common::*;
use std::fs;
use std::process::Command;
use std::time::Duration;

#[test]
fn postfix_smtp_source_messages_are_all_delivered() {
    assert!(
        have_program("/usr/sbin/smtp-source"),
        "/usr/sbin/smtp-source missing: install the postfix package (scripts/test does)"
    );
    let t = Tern::start(LOCAL_OPEN);
    let mut cmd = Command::new("/usr/sbin/smtp-source");
    cmd.args([
        "-s",
        "4",
        "-m",
        "200",
        "-l",
        "2048",
        "-f",
        "sender@localhost",
        "-t",
        "bob@localhost",
        &format!("127.0.0.1:{}", t.port),
    ]);
    let out = run(cmd, Duration::from_secs(120));
    out.assert_success("smtp-source");
    let mails = t.wait_mail_within("localhost", "bob", 200, Duration::from_secs(60));
    assert_eq!(mails.len(), 200);
    for m in &mails {
        assert!(m.starts_with(b"Return-Path: <sender@localhost>\r\n"), "{}", show(m));
        assert!(received_id(m).is_some(), "no queue id in Received: {}", show(m));
    }
}

/// Runs doveadm as an unprivileged mail user against a throwaway config.
fn doveadm(conf: &std::path::Path, home: &std::path::Path, args: &[&str]) -> Out {
    let mut cmd = Command::new("doveadm");
    cmd.arg("-c").arg(conf).args(args).env("USER", "alice@localhost").env("HOME", home);
    run(cmd, Duration::from_secs(30))
}

#[test]
fn dovecot_reads_the_maildir() {
    if !have_program("doveadm") {
        eprintln!("SKIPPED: doveadm not installed (package dovecot-core); Dovecot check not run");
        return;
    }
    let t = Tern::start(LOCAL_OPEN);
    for subject in ["first for dovecot", "second for dovecot"] {
        let out =
            t.swaks(&["-f", "sender@example.org", "-t", "alice@localhost", "--header", &format!("Subject: {subject}")]);
        out.assert_success("swaks");
    }
    t.wait_mail("localhost", "alice", 2);

    // Dovecot refuses to access mail as root: hand the Maildirs to nobody.
    let nobody = "65534";
    let home = t.path().join("dovecot-home");
    fs::create_dir_all(&home).unwrap();
    for p in [t.path(), t.data_dir.as_path()] {
        let out = run(
            {
                let mut c = Command::new("chmod");
                c.arg("755").arg(p);
                c
            },
            CLIENT_TIMEOUT,
        );
        out.assert_success("chmod");
    }
    for p in [t.mail_root(), home.clone()] {
        let mut c = Command::new("chown");
        c.arg("-R").arg(format!("{nobody}:{nobody}")).arg(&p);
        run(c, CLIENT_TIMEOUT).assert_success("chown");
    }
    let conf = t.path().join("dovecot.conf");
    fs::write(
        &conf,
        format!(
            "base_dir = {dir}/dovecot-run\n\
             state_dir = {dir}/dovecot-state\n\
             log_path = {dir}/dovecot.log\n\
             ssl = no\n\
             protocols =\n\
             mail_uid = {nobody}\n\
             mail_gid = {nobody}\n\
             mail_location = maildir:{root}/%d/%n\n",
            dir = t.path().display(),
            root = t.mail_root().display(),
        ),
    )
    .unwrap();

    let status = doveadm(&conf, &home, &["-f", "flow", "mailbox", "status", "messages", "INBOX"]);
    status.assert_success("doveadm mailbox status");
    assert!(status.stdout.contains("messages=2"), "dovecot does not see 2 messages: {}", status.all());
    let fetch =
        doveadm(&conf, &home, &["fetch", "hdr.subject hdr.return-path hdr.delivered-to", "mailbox", "INBOX", "all"]);
    fetch.assert_success("doveadm fetch");
    for want in ["first for dovecot", "second for dovecot", "<sender@example.org>", "alice@localhost"] {
        assert!(fetch.stdout.contains(want), "{want} missing: {}", fetch.all());
    }
    let body = doveadm(&conf, &home, &["fetch", "body", "mailbox", "INBOX", "all"]);
    body.assert_success("doveadm fetch body");
    assert!(body.stdout.contains("This is a test mailing"), "{}", body.all());
}
