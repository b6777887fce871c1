//! Tern's security end to end: TLS (STARTTLS and implicit), AUTH, submission
//! rules, relay control and abuse limits, driven with real clients
//! (openssl s_client, Python's smtplib, swaks, curl) and with a raw SMTP
//! client for exact replies. Mail for remote domains goes through the queue
//! to a second Tern on 127.0.0.2; no DNS is involved.
//!
//! The open-relay matrix tries every address trick from every port and
//! session state as a stranger (`[relay] networks = []`): each recipient is
//! either refused or delivered to the local mailbox it really names, and the
//! peer on 127.0.0.2 is never contacted.

mod common;

use common::security::*;
use common::*;
use std::fs;
use std::thread;
use std::time::{Duration, Instant};

/// Checks one message submitted by alice to `carol@local.test` and
/// `bob@remote.test`: both copies arrive, and the local one carries a
/// Received header for authenticated TLS.
#[track_caller]
fn assert_submitted(m: &Mta, token: &str) -> Vec<u8> {
    let local = m.local_mail("carol", 1);
    assert_eq!(local.len(), 1, "one copy for carol");
    assert!(contains(&local[0], token.as_bytes()), "carol's copy lacks {token}:\n{}", show(&local[0]));
    assert!(local[0].starts_with(format!("Return-Path: <{ALICE}>\r\n").as_bytes()), "{}", show(&local[0]));
    let received = first_received(&local[0]);
    assert!(received.contains(" with ESMTPSA id "), "not marked ESMTPSA: {received}");
    assert!(received.contains("(using TLSv1."), "TLS not named: {received}");
    assert!(received.contains(" with cipher "), "cipher not named: {received}");
    let remote = m.remote_mail("bob", 1);
    assert_eq!(remote.len(), 1, "one copy for bob at the peer");
    assert!(contains(&remote[0], token.as_bytes()), "bob's copy lacks {token}:\n{}", show(&remote[0]));
    assert!(remote[0].starts_with(format!("Return-Path: <{ALICE}>\r\n").as_bytes()), "{}", show(&remote[0]));
    local.into_iter().next().unwrap()
}

const CAROL: &str = "carol@local.test";

/// `openssl req -newkey` arguments for a P-256 key.
const EC: &[&str] = &["ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];

// ---------------------------------------------------------------------------
// Real clients, authenticated, to a local mailbox and to a remote domain.

#[test]
fn openssl_starttls_on_submission_with_auth_plain() {
    let m = Mta::start(Opts::default());
    let mut s = OpenSsl::starttls(m.submission);
    let r = s.cmd("EHLO client.test");
    assert_eq!(r.code, 250, "{r:?}");
    assert!(r.has("AUTH PLAIN LOGIN"), "AUTH not offered after STARTTLS: {r:?}");
    assert!(!r.has("STARTTLS"), "STARTTLS offered twice: {r:?}");
    let r = s.cmd(&format!("AUTH PLAIN {}", plain(ALICE, ALICE_PW)));
    assert!(r.code == 235 && r.has("2.7.0"), "{r:?}");
    assert_eq!(s.cmd(&format!("MAIL FROM:<{ALICE}>")).code, 250);
    assert_eq!(s.cmd(&format!("RCPT TO:<{CAROL}>")).code, 250);
    assert_eq!(s.cmd(&format!("RCPT TO:<{BOB}>")).code, 250);
    assert_eq!(s.cmd("DATA").code, 354);
    let mut body = message("openssl-starttls-plain", BOB);
    body.extend_from_slice(b".\r\n");
    s.send(&body);
    let r = s.reply();
    assert!(r.code == 250 && r.has("queued as"), "{r:?}");
    assert_eq!(s.quit().code, 221);
    assert_submitted(&m, "openssl-starttls-plain");
}

#[test]
fn openssl_implicit_tls_on_submissions_with_auth_login() {
    let m = Mta::start(Opts::default());
    let mut s = OpenSsl::implicit(m.submissions);
    let g = s.reply();
    assert_eq!(g.code, 220, "{g:?}");
    let r = s.cmd("EHLO client.test");
    assert!(r.has("AUTH PLAIN LOGIN") && !r.has("STARTTLS"), "{r:?}");
    assert_eq!(s.cmd("AUTH LOGIN").code, 334);
    assert_eq!(s.cmd(&b64(ALICE.as_bytes())).code, 334);
    let r = s.cmd(&b64(ALICE_PW.as_bytes()));
    assert!(r.code == 235 && r.has("2.7.0"), "{r:?}");
    assert_eq!(s.cmd(&format!("MAIL FROM:<{ALICE}>")).code, 250);
    assert_eq!(s.cmd(&format!("RCPT TO:<{CAROL}>")).code, 250);
    assert_eq!(s.cmd(&format!("RCPT TO:<{BOB}>")).code, 250);
    assert_eq!(s.cmd("DATA").code, 354);
    let mut body = message("openssl-implicit-login", BOB);
    body.extend_from_slice(b".\r\n");
    s.send(&body);
    assert_eq!(s.reply().code, 250);
    assert_eq!(s.quit().code, 221);
    assert_submitted(&m, "openssl-implicit-login");
}

#[test]
fn smtplib_starttls_login_on_submission() {
    let m = Mta::start(Opts::default());
    m.write("msg.eml", &message("smtplib-starttls", BOB));
    let out = m.python(&format!(
        r#"
s = starttls(SUB)
assert s.has_extn("auth"), s.esmtp_features
s.login("{ALICE}", "{ALICE_PW}")
refused = s.sendmail("{ALICE}", ["{CAROL}", "{BOB}"], message("msg.eml"))
assert refused == {{}}, refused
print("tls", s.sock.version())
s.quit()
"#
    ));
    out.assert_success("smtplib starttls + login");
    assert!(out.stdout.contains("tls TLSv1.3"), "{}", out.stdout);
    assert_submitted(&m, "smtplib-starttls");
}

#[test]
fn smtplib_smtp_ssl_login_on_submissions() {
    let m = Mta::start(Opts::default());
    m.write("msg.eml", &message("smtplib-ssl", BOB));
    let out = m.python(&format!(
        r#"
s = implicit(SUBS)
s.user, s.password = "{ALICE}", "{ALICE_PW}"
code, resp = s.auth("LOGIN", s.auth_login)
assert code == 235 and resp.startswith(b"2.7.0"), (code, resp)
refused = s.sendmail("{ALICE}", ["{CAROL}", "{BOB}"], message("msg.eml"))
assert refused == {{}}, refused
s.quit()
"#
    ));
    out.assert_success("smtplib SMTP_SSL + AUTH LOGIN");
    assert_submitted(&m, "smtplib-ssl");
}

#[test]
fn smtplib_tls12_with_auth_on_port_25_relays() {
    let m = Mta::start(Opts::default());
    m.write("msg.eml", &message("smtplib-port25-tls12", BOB));
    let out = m.python(&format!(
        r#"
ctx = ssl._create_unverified_context()
ctx.maximum_version = ssl.TLSVersion.TLSv1_2
s = starttls(PORT, ctx)
s.login("{ALICE}", "{ALICE_PW}")
refused = s.sendmail("{ALICE}", ["{CAROL}", "{BOB}"], message("msg.eml"))
assert refused == {{}}, refused
print("tls", s.sock.version())
s.quit()
"#
    ));
    out.assert_success("smtplib on port 25 with TLS 1.2 and AUTH");
    assert!(out.stdout.contains("tls TLSv1.2"), "{}", out.stdout);
    let local = assert_submitted(&m, "smtplib-port25-tls12");
    let received = first_received(&local);
    assert!(received.contains("(using TLSv1.2 with cipher "), "{received}");
}

#[test]
fn swaks_starttls_auth_plain_on_submission() {
    let m = Mta::start(Opts::default());
    let file = m.write("msg.eml", &message("swaks-tls-plain", BOB));
    let out = m.swaks(
        Port::Submission,
        &[
            "--tls",
            "--auth",
            "PLAIN",
            "--auth-user",
            ALICE,
            "--auth-password",
            ALICE_PW,
            "-f",
            ALICE,
            "-t",
            &format!("{CAROL},{BOB}"),
            "--data",
            &format!("@{file}"),
        ],
    );
    out.assert_success("swaks --tls --auth PLAIN");
    assert!(out.stdout.contains("235 2.7.0"), "{}", out.stdout);
    assert!(out.stdout.contains("250 2.0.0 Ok: queued as"), "{}", out.stdout);
    assert_submitted(&m, "swaks-tls-plain");
}

#[test]
fn swaks_implicit_tls_auth_login_on_submissions() {
    let m = Mta::start(Opts::default());
    let file = m.write("msg.eml", &message("swaks-tlsc-login", BOB));
    let out = m.swaks(
        Port::Submissions,
        &[
            "--tlsc",
            "--auth",
            "LOGIN",
            "--auth-user",
            ALICE,
            "--auth-password",
            ALICE_PW,
            "-f",
            ALICE,
            "-t",
            &format!("{CAROL},{BOB}"),
            "--data",
            &format!("@{file}"),
        ],
    );
    out.assert_success("swaks --tlsc --auth LOGIN");
    assert!(out.stdout.contains("235 2.7.0"), "{}", out.stdout);
    assert_submitted(&m, "swaks-tlsc-login");
}

#[test]
fn curl_smtps_on_submissions() {
    let m = Mta::start(Opts::default());
    let file = m.write("msg.eml", &message("curl-smtps", BOB));
    let url = format!("smtps://127.0.0.1:{}", m.submissions);
    let user = format!("{ALICE}:{ALICE_PW}");
    let out = m.t.curl(&[
        &url,
        "--insecure",
        "--user",
        &user,
        "--mail-from",
        ALICE,
        "--mail-rcpt",
        CAROL,
        "--mail-rcpt",
        BOB,
        "--upload-file",
        &file,
    ]);
    out.assert_success("curl smtps://");
    assert_submitted(&m, "curl-smtps");
}

#[test]
fn curl_smtp_ssl_reqd_on_submission() {
    let m = Mta::start(Opts::default());
    let file = m.write("msg.eml", &message("curl-ssl-reqd", BOB));
    let url = format!("smtp://127.0.0.1:{}", m.submission);
    let user = format!("{ALICE}:{ALICE_PW}");
    let out = m.t.curl(&[
        &url,
        "--ssl-reqd",
        "--insecure",
        "--user",
        &user,
        "--mail-from",
        ALICE,
        "--mail-rcpt",
        CAROL,
        "--mail-rcpt",
        BOB,
        "--upload-file",
        &file,
    ]);
    out.assert_success("curl smtp:// --ssl-reqd");
    assert_submitted(&m, "curl-ssl-reqd");
}

// ---------------------------------------------------------------------------
// Refusals, each with its exact reply.

#[test]
fn auth_is_offered_only_after_tls_and_refused_before_with_538() {
    let m = Mta::start(Opts { peer: false, ..Opts::default() });
    for port in [Port::Smtp, Port::Submission] {
        let mut s = m.connect(port);
        let r = s.ehlo();
        assert!(r.has("STARTTLS"), "{port:?}: {r:?}");
        assert!(!r.has("AUTH"), "{port:?}: AUTH offered without TLS: {r:?}");
        for cmd in [format!("AUTH PLAIN {}", plain(ALICE, ALICE_PW)), "AUTH LOGIN".to_string()] {
            let r = s.cmd(&cmd);
            assert_eq!((r.code, r.has("5.7.11")), (538, true), "{port:?} {cmd}: {r:?}");
        }
        let r = s.starttls().unwrap_or_else(|e| panic!("{port:?}: {e}"));
        assert!(r.lines[0].starts_with("220 2.0.0"), "{r:?}");
        // RFC 3207: the session starts over; EHLO again.
        let r = s.cmd(&format!("AUTH PLAIN {}", plain(ALICE, ALICE_PW)));
        assert_eq!(r.code, 503, "{port:?}: AUTH accepted before the second EHLO: {r:?}");
        let r = s.ehlo();
        assert!(r.has("AUTH PLAIN LOGIN"), "{port:?}: {r:?}");
        assert!(!r.has("STARTTLS"), "{port:?}: {r:?}");
        let r = s.cmd(&format!("AUTH PLAIN {}", plain(ALICE, ALICE_PW)));
        assert!(r.code == 235 && r.has("2.7.0"), "{port:?}: {r:?}");
        let r = s.ehlo();
        assert!(!r.has("AUTH"), "{port:?}: AUTH offered after authentication: {r:?}");
    }
    // Implicit TLS: offered at once.
    let mut s = m.connect(Port::Submissions);
    let r = s.ehlo();
    assert!(r.has("AUTH PLAIN LOGIN") && !r.has("STARTTLS"), "{r:?}");
    // swaks refuses to authenticate when AUTH is not advertised.
    let out = m.swaks(
        Port::Submission,
        &["--auth", "PLAIN", "--auth-user", ALICE, "--auth-password", ALICE_PW, "-f", ALICE, "-t", CAROL],
    );
    assert!(!out.success(), "swaks authenticated without TLS:\n{}", out.all());
    assert!(m.t.all_delivered().is_empty());
}

#[test]
fn implicit_tls_client_hello_is_not_talking_first() {
    // With implicit TLS the client speaks first (its ClientHello); only
    // plaintext sent before the SMTP greeting is a protocol violation.
    for delay in ["0s", "1s"] {
        let extra = format!("[limits]\ngreeting_delay = \"{delay}\"\n");
        let m = Mta::start(Opts { peer: false, extra: &extra, ..Opts::default() });
        let mut failures = Vec::new();
        let tries = if delay == "0s" { 40 } else { 3 };
        for i in 0..tries {
            match Smtp::connect_tls(m.submissions) {
                Ok(mut s) => {
                    let g = s.reply();
                    assert_eq!(g.code, 220, "greeting over implicit TLS: {g:?}");
                }
                Err(e) => failures.push(format!("connection {i}: {e}")),
            }
        }
        let refusals = m.t.logs().matches("client sent data before the greeting").count();
        assert!(
            failures.is_empty(),
            "greeting_delay = {delay}: {} of {tries} implicit TLS connections failed ({refusals} logged as \
             \"client sent data before the greeting\"):\n{}",
            failures.len(),
            failures.join("\n")
        );
    }
}

#[test]
fn plaintext_auth_on_loopback_only_when_allowed() {
    let m = Mta::start(Opts { peer: false, extra: "[auth]\nallow_plaintext_loopback = true\n", ..Opts::default() });
    let mut s = m.connect(Port::Submission);
    let r = s.ehlo();
    assert!(r.has("AUTH PLAIN LOGIN"), "{r:?}");
    let r = s.cmd(&format!("AUTH PLAIN {}", plain(ALICE, ALICE_PW)));
    assert!(r.code == 235 && r.has("2.7.0"), "{r:?}");
    s.mail(ALICE, &[CAROL], &message("plaintext-loopback", CAROL)).expect("submission in plain text");
    let stored = m.local_mail("carol", 1);
    let received = first_received(&stored[0]);
    assert!(received.contains(" with ESMTPA id "), "{received}");
    assert!(!received.contains("using TLS"), "{received}");
}

#[test]
fn starttls_after_plaintext_auth_forgets_the_authentication() {
    // RFC 3207 §4.2: after the handshake the server discards what the client
    // told it before, which includes a plaintext authentication.
    let m = Mta::start(Opts { peer: false, extra: "[auth]\nallow_plaintext_loopback = true\n", ..Opts::default() });
    let mut s = m.connect(Port::Submission);
    s.ehlo();
    let r = s.cmd(&format!("AUTH PLAIN {}", plain(ALICE, ALICE_PW)));
    assert_eq!(r.code, 235, "{r:?}");
    s.ehlo();
    s.starttls().expect("STARTTLS");
    let ehlo = s.ehlo();
    let mail = s.cmd(&format!("MAIL FROM:<{ALICE}>"));
    assert!(
        mail.code == 530 && mail.has("5.7.0") && ehlo.has("AUTH PLAIN LOGIN"),
        "the plaintext authentication survived STARTTLS:\nEHLO after STARTTLS: {ehlo:?}\nMAIL: {mail:?}"
    );
}

#[test]
fn bad_password_is_refused_with_535_and_a_growing_delay() {
    let m = Mta::start(Opts { peer: false, extra: "[auth]\nmax_failures = 50\n", ..Opts::default() });
    // smtplib sees the code.
    let out = m.python(&format!(
        r#"
s = starttls(SUB)
try:
    s.login("{ALICE}", "wrong password")
    print("logged in")
except smtplib.SMTPAuthenticationError as e:
    print("refused", e.smtp_code, e.smtp_error.decode())
"#
    ));
    out.assert_success("smtplib with a bad password");
    assert!(out.stdout.contains("refused 535 5.7.8"), "{}", out.stdout);
    // Each failure from the same client waits longer.
    let mut s = m.tls(Port::Submission);
    let mut took = Vec::new();
    for (user, password) in [(ALICE, "nope-1"), ("nobody@local.test", ALICE_PW), (ALICE, "nope-3")] {
        let start = Instant::now();
        let r = s.cmd(&format!("AUTH PLAIN {}", plain(user, password)));
        took.push(start.elapsed());
        assert_eq!((r.code, r.has("5.7.8")), (535, true), "{user}: {r:?}");
    }
    let r = s.auth_login(ALICE, "nope-4");
    assert_eq!((r.code, r.has("5.7.8")), (535, true), "{r:?}");
    eprintln!("AUTH failure delays: {took:?}");
    assert!(took[1] > took[0] && took[2] > took[1], "the delay does not grow: {took:?}");
    assert!(took[2] >= took[0] + Duration::from_millis(700), "the delay does not grow: {took:?}");
    // The right password still works on the same connection.
    let r = s.cmd(&format!("AUTH PLAIN {}", plain(ALICE, ALICE_PW)));
    assert_eq!(r.code, 235, "{r:?}");
    // swaks reports the failure.
    let out = m.swaks(
        Port::Submission,
        &["--tls", "--auth", "PLAIN", "--auth-user", ALICE, "--auth-password", "bad", "-f", ALICE, "-t", CAROL],
    );
    assert!(!out.success(), "{}", out.all());
    assert!(out.all().contains("535 5.7.8"), "{}", out.all());
    assert!(m.t.all_delivered().is_empty());
}

#[test]
fn repeated_failures_ban_the_client_with_421() {
    let m = Mta::start(Opts {
        peer: false,
        extra: "[auth]\nmax_failures = 5\nfailure_window = \"10m\"\nban_time = \"4s\"\n",
        ..Opts::default()
    });
    let mut s = m.tls(Port::Submission);
    for i in 1..=4 {
        let r = s.cmd(&format!("AUTH PLAIN {}", plain(ALICE, &format!("wrong-{i}"))));
        assert_eq!((r.code, r.has("5.7.8")), (535, true), "failure {i}: {r:?}");
    }
    let r = s.cmd(&format!("AUTH PLAIN {}", plain(ALICE, "wrong-5")));
    assert_eq!((r.code, r.has("4.7.0")), (421, true), "fifth failure: {r:?}");
    let banned_at = Instant::now();
    // Even the right password is refused while banned.
    if let Some(r) = s.try_reply(Duration::from_millis(100)) {
        panic!("unexpected reply {r:?}");
    }
    if !s.closed {
        let _ = s.send(format!("AUTH PLAIN {}\r\n", plain(ALICE, ALICE_PW)).as_bytes());
        if let Some(r) = s.try_reply(Duration::from_secs(5)) {
            assert_eq!((r.code, r.has("4.7.0")), (421, true), "AUTH while banned: {r:?}");
        }
    }
    // New connections are refused at once, on every port; on the implicit TLS
    // port, inside TLS (RFC 8314).
    for port in [m.t.port, m.submission] {
        let mut raw = Raw::connect(port);
        let r = raw.reply();
        assert_eq!((r.code, r.has("4.7.0")), (421, true), "connect while banned: {r:?}");
        assert!(raw.wait_closed(Duration::from_secs(5)), "connection left open after 421");
    }
    let mut s = Smtp::connect_tls(m.submissions).expect("TLS handshake while banned");
    let r = s.reply();
    assert_eq!((r.code, r.has("4.7.0")), (421, true), "connect over implicit TLS while banned: {r:?}");
    assert!(s.wait_closed(Duration::from_secs(5)), "connection left open after 421");
    // The ban ends.
    let wait = Duration::from_secs(4).saturating_sub(banned_at.elapsed()) + Duration::from_millis(500);
    thread::sleep(wait);
    let mut s = m.tls(Port::Submission);
    let r = s.cmd(&format!("AUTH PLAIN {}", plain(ALICE, ALICE_PW)));
    assert_eq!(r.code, 235, "after the ban: {r:?}");
}

#[test]
fn submission_without_auth_is_refused_with_530() {
    let m = Mta::start(Opts::default());
    for port in [Port::Submission, Port::Submissions] {
        let mut s = m.connect(port);
        s.ehlo();
        let r = s.cmd(&format!("MAIL FROM:<{ALICE}>"));
        assert_eq!((r.code, r.has("5.7.0")), (530, true), "{port:?} plain: {r:?}");
        let mut s = m.tls(port);
        for from in [ALICE, "stranger@elsewhere.test", ""] {
            let r = s.cmd(&format!("MAIL FROM:<{from}>"));
            assert_eq!((r.code, r.has("5.7.0")), (530, true), "{port:?} <{from}>: {r:?}");
        }
        let r = s.cmd(&format!("RCPT TO:<{CAROL}>"));
        assert_eq!(r.code, 503, "{port:?}: RCPT without MAIL: {r:?}");
    }
    let out = m.swaks(Port::Submission, &["--tls", "-f", ALICE, "-t", CAROL]);
    assert!(!out.success() && out.all().contains("530 5.7.0"), "{}", out.all());
    let url = format!("smtps://127.0.0.1:{}", m.submissions);
    let file = m.write("msg.eml", &message("curl-noauth", CAROL));
    let out = m.t.curl(&[&url, "--insecure", "--mail-from", ALICE, "--mail-rcpt", CAROL, "--upload-file", &file]);
    assert!(!out.success(), "curl submitted without AUTH:\n{}", out.all());
    thread::sleep(Duration::from_millis(500));
    assert!(m.t.all_delivered().is_empty(), "{:?}", m.t.all_delivered());
    m.peer().assert_untouched("submission without AUTH");
}

#[test]
fn authenticated_sender_must_be_owned_553() {
    let m = Mta::start(Opts { aliases: "\"sales@local.test\" = [\"alice@local.test\"]\n", ..Opts::default() });
    let mut s = m.alice(Port::Submission);
    for from in ["bob@local.test", BOB, "ALICE@remote.test", "postmaster@local.test", "alice@elsewhere.test"] {
        let r = s.cmd(&format!("MAIL FROM:<{from}>"));
        assert_eq!((r.code, r.has("5.7.1")), (553, true), "MAIL FROM:<{from}>: {r:?}");
    }
    for from in [ALICE, "Alice@LOCAL.TEST", "alice+lists@local.test", "sales@local.test", "alice@local.test."] {
        let r = s.cmd(&format!("MAIL FROM:<{from}>"));
        assert_eq!(r.code, 250, "MAIL FROM:<{from}>: {r:?}");
        assert_eq!(s.cmd("RSET").code, 250);
    }
    let out = m.python(&format!(
        r#"
s = starttls(SUB)
s.login("{ALICE}", "{ALICE_PW}")
try:
    s.sendmail("ceo@local.test", ["{CAROL}"], b"Subject: forged\r\n\r\nx\r\n")
    print("sent")
except smtplib.SMTPSenderRefused as e:
    print("refused", e.smtp_code, e.smtp_error.decode())
"#
    ));
    out.assert_success("smtplib with a forged sender");
    assert!(out.stdout.contains("refused 553 5.7.1"), "{}", out.stdout);
    thread::sleep(Duration::from_millis(500));
    assert!(m.t.all_delivered().is_empty());
}

#[test]
fn stranger_cannot_relay_without_auth_554() {
    let m = Mta::start(Opts::default());
    for tls in [false, true] {
        let mut s = if tls { m.tls(Port::Smtp) } else { m.connect(Port::Smtp) };
        if !tls {
            s.ehlo();
        }
        assert_eq!(s.cmd("MAIL FROM:<stranger@elsewhere.test>").code, 250);
        let r = s.cmd(&format!("RCPT TO:<{BOB}>"));
        assert_eq!(r.code, 554, "tls {tls}: {r:?}");
        assert!(r.lines[0].starts_with("554 5.7.1 Relay access denied"), "tls {tls}: {r:?}");
        let r = s.cmd(&format!("RCPT TO:<{CAROL}>"));
        assert_eq!(r.code, 250, "tls {tls}: local recipient refused: {r:?}");
    }
    let out = m.swaks(Port::Smtp, &["-f", "stranger@elsewhere.test", "-t", BOB]);
    assert!(!out.success() && out.all().contains("554 5.7.1 Relay access denied"), "{}", out.all());
    let out = m.swaks(Port::Smtp, &["--tls", "-f", ALICE, "-t", BOB]);
    assert!(!out.success() && out.all().contains("554 5.7.1"), "{}", out.all());
    thread::sleep(Duration::from_secs(1));
    m.peer().assert_untouched("relay without AUTH");
}

#[test]
fn pipelined_plaintext_after_starttls_is_never_executed() {
    let m = Mta::start(Opts::default());
    for port in [Port::Smtp, Port::Submission] {
        let mut s = m.connect(port);
        s.ehlo();
        s.send(
            format!(
                "STARTTLS\r\nMAIL FROM:<stranger@elsewhere.test>\r\nRCPT TO:<{CAROL}>\r\nDATA\r\nSubject: injected\r\n\r\ninjected\r\n.\r\n"
            )
            .as_bytes(),
        )
        .expect("send");
        let replies = s.replies_until_quiet(Duration::from_secs(3));
        assert_eq!(replies.len(), 1, "{port:?}: {replies:?}");
        assert!(replies[0].lines[0].starts_with("554 5.5.0"), "{port:?}: {replies:?}");
        assert!(s.wait_closed(Duration::from_secs(5)), "{port:?}: connection left open");
        // The same injection with STARTTLS alone in the first packet: the
        // extra bytes arrive before the handshake and break it.
        let mut s = m.connect(port);
        s.ehlo();
        s.send(b"STARTTLS\r\n").expect("send");
        let r = s.reply();
        assert_eq!(r.code, 220, "{r:?}");
        let _ = s.send(format!("MAIL FROM:<stranger@elsewhere.test>\r\nRCPT TO:<{CAROL}>\r\n").as_bytes());
        assert!(s.wait_closed(Duration::from_secs(10)), "{port:?}: garbage instead of a handshake kept open");
    }
    thread::sleep(Duration::from_millis(500));
    assert!(m.t.all_delivered().is_empty(), "{:?}", m.t.all_delivered());
    let logs = m.t.logs();
    assert!(!logs.contains("checks: queued"), "a message was queued:\n{logs}");
}

#[test]
fn received_header_says_esmtps_without_auth() {
    let m = Mta::start(Opts { peer: false, ..Opts::default() });
    let mut s = m.tls(Port::Smtp);
    assert_eq!(s.tls_version().as_deref(), Some("TLSv1_3"));
    s.mail("stranger@elsewhere.test", &[CAROL], &message("esmtps", CAROL)).expect("mail over TLS");
    let stored = m.local_mail("carol", 1);
    let received = first_received(&stored[0]);
    assert!(received.contains(" with ESMTPS id "), "{received}");
    assert!(received.contains("(using TLSv1.3 with cipher TLS13_"), "{received}");
}

#[test]
fn submitted_mail_gets_date_and_message_id() {
    let m = Mta::start(Opts { peer: false, ..Opts::default() });
    let mut s = m.alice(Port::Submission);
    let bare =
        b"From: <alice@local.test>\r\nTo: <carol@local.test>\r\nSubject: bare\r\n\r\nNo Date, no Message-ID.\r\n";
    let r = s.mail(ALICE, &[CAROL], bare).expect("submit");
    let id = queue_id(&r.lines[0]).expect("queue id");
    let complete = message("complete", CAROL);
    s.mail(ALICE, &[CAROL], &complete).expect("submit");
    let mails = m.local_mail("carol", 2);
    let bare_stored = mails.iter().find(|m| contains(m, b"Subject: bare")).expect("bare message");
    let dates = header_values(bare_stored, "Date");
    assert_eq!(dates.len(), 1, "{}", show(bare_stored));
    assert!(chrono_like(&dates[0]), "Date: {}", dates[0]);
    assert_eq!(header_values(bare_stored, "Message-ID"), [format!("<{id}@{HOSTNAME}>")], "{}", show(bare_stored));
    let complete_stored = mails.iter().find(|m| contains(m, b"Subject: complete")).expect("complete message");
    assert_eq!(header_values(complete_stored, "Date"), ["Mon, 1 Jan 2024 00:00:00 +0000"]);
    assert_eq!(header_values(complete_stored, "Message-ID"), ["<complete@local.test>"]);
}

/// An RFC 5322 date like `Mon, 1 Jan 2024 00:00:00 +0000`.
fn chrono_like(date: &str) -> bool {
    let words: Vec<&str> = date.split_whitespace().collect();
    words.len() == 6 && words[0].ends_with(',') && words[4].len() == 8 && words[5].len() == 5
}

#[test]
fn http_request_is_answered_and_closed() {
    let m = Mta::start(Opts { peer: false, ..Opts::default() });
    for request in ["GET / HTTP/1.1\r\nHost: tern.test\r\n\r\n", "POST /x HTTP/1.0\r\nContent-Length: 0\r\n\r\n"] {
        let mut raw = m.t.raw();
        raw.send(request.as_bytes()).expect("send");
        let replies = raw.replies_until_quiet(Duration::from_secs(2));
        assert_eq!(replies.len(), 1, "{request:?}: {replies:?}");
        assert_eq!(replies[0].code, 554, "{request:?}: {replies:?}");
        assert!(raw.wait_closed(Duration::from_secs(5)), "{request:?}: connection left open");
    }
    let out = m.t.curl(&[&format!("http://127.0.0.1:{}/", m.t.port)]);
    assert!(!out.success(), "curl got an HTTP answer:\n{}", out.all());
}

#[test]
fn connection_limits_answer_421() {
    let m = Mta::start(Opts { peer: false, extra: "[limits]\nmax_connections_per_ip = 3\n", ..Opts::default() });
    // Let the start-up probes' connections end first.
    thread::sleep(Duration::from_millis(300));
    let mut open: Vec<Smtp> = (0..3).map(|_| m.connect(Port::Smtp)).collect();
    let mut raw = Raw::connect(m.t.port);
    let r = raw.reply();
    assert_eq!((r.code, r.has("4.7.0")), (421, true), "fourth connection from one IP: {r:?}");
    assert!(raw.wait_closed(Duration::from_secs(5)));
    // Other ports count too.
    let mut raw = Raw::connect(m.submission);
    assert_eq!(raw.reply().code, 421);
    // A slot is freed when a connection ends.
    assert_eq!(open[0].cmd("QUIT").code, 221);
    open.remove(0);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut raw = Raw::connect(m.t.port);
        let r = raw.reply();
        if r.code == 220 {
            break;
        }
        assert!(Instant::now() < deadline, "slot not freed: {r:?}");
        thread::sleep(Duration::from_millis(100));
    }

    // The total limit applies to trusted clients as well.
    let m =
        Mta::start(Opts { stranger: false, peer: false, extra: "[limits]\nmax_connections = 2\n", ..Opts::default() });
    thread::sleep(Duration::from_millis(300));
    let _a = m.connect(Port::Smtp);
    let _b = m.connect(Port::Submission);
    let mut raw = Raw::connect(m.t.port);
    let r = raw.reply();
    assert_eq!((r.code, r.has("4.7.0")), (421, true), "third connection of two allowed: {r:?}");
}

/// Waits until every connection Tern logged has ended (the start-up probes).
#[track_caller]
fn wait_connections_ended(m: &Mta) {
    let ended = |t: &Tern| t.logs().lines().filter(|l| l.contains(" disconnect")).count();
    let deadline = Instant::now() + Duration::from_secs(10);
    while ended(&m.t) < connects(&m.t) {
        assert!(Instant::now() < deadline, "connections still open\n{}", m.t.logs());
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn refusal_on_submissions_comes_inside_tls() {
    let m = Mta::start(Opts { peer: false, extra: "[limits]\nmax_connections_per_ip = 2\n", ..Opts::default() });
    wait_connections_ended(&m);
    let _held: Vec<Smtp> = (0..2).map(|_| m.connect(Port::Smtp)).collect();
    // Python's ssl: the handshake completes, then the 421 arrives over TLS and the
    // server closes.
    let out = m.python(
        r#"
raw = socket.create_connection(("127.0.0.1", SUBS), timeout=10)
s = CTX.wrap_socket(raw, server_hostname="tern.test")
print("TLS", s.version())
data = b""
while True:
    chunk = s.recv(4096)
    if not chunk:
        break
    data += chunk
print("GOT", data.decode().strip())
"#,
    );
    out.assert_success("python ssl on the submissions port");
    assert!(out.stdout.contains("TLS TLSv1."), "{}", out.stdout);
    assert!(out.stdout.contains("GOT 421 4.7.0 "), "{}", out.stdout);
    // A client that never completes the handshake hears nothing in plaintext.
    let mut raw = Raw::connect(m.submissions);
    raw.send(b"EHLO client.test\r\n").unwrap();
    let replies = raw.replies_until_quiet(Duration::from_secs(10));
    assert!(replies.iter().all(|r| r.code != 421), "a plaintext 421 on the submissions port: {replies:?}");
    assert!(raw.wait_closed(Duration::from_secs(10)), "connection left open");
    // Other listeners still refuse in plaintext.
    let mut raw = Raw::connect(m.submission);
    let r = raw.reply();
    assert_eq!((r.code, r.has("4.7.0")), (421, true), "{r:?}");
}

#[test]
fn rate_limits_answer_451() {
    let limits = "[limits]\nmax_messages_per_window = 2\nmax_recipients_per_window = 3\nrate_window = \"1h\"\n";
    let m = Mta::start(Opts { peer: false, extra: limits, ..Opts::default() });
    let mut s = m.connect(Port::Smtp);
    s.ehlo();
    assert_eq!(s.cmd("MAIL FROM:<stranger@elsewhere.test>").code, 250);
    for rcpt in ["r1@local.test", "r2@local.test", "r3@local.test"] {
        assert_eq!(s.cmd(&format!("RCPT TO:<{rcpt}>")).code, 250);
    }
    let r = s.cmd("RCPT TO:<r4@local.test>");
    assert_eq!((r.code, r.has("4.7.1")), (451, true), "fourth recipient: {r:?}");
    assert_eq!(s.cmd("RSET").code, 250);
    assert_eq!(s.cmd("MAIL FROM:<stranger@elsewhere.test>").code, 250);
    assert_eq!(s.cmd("RSET").code, 250);
    let r = s.cmd("MAIL FROM:<stranger@elsewhere.test>");
    assert_eq!((r.code, r.has("4.7.1")), (451, true), "third message: {r:?}");
    // A new connection from the same IP is still over the limit.
    let mut s = m.connect(Port::Smtp);
    s.ehlo();
    assert_eq!(s.cmd("MAIL FROM:<other@elsewhere.test>").code, 451);

    // Clients in [relay] networks are exempt; authenticated users are not.
    let m = Mta::start(Opts { stranger: false, peer: false, extra: limits, ..Opts::default() });
    let mut s = m.connect(Port::Smtp);
    s.ehlo();
    for i in 0..5 {
        let r = s.cmd("MAIL FROM:<trusted@elsewhere.test>");
        assert_eq!(r.code, 250, "trusted message {i}: {r:?}");
        for j in 0..2 {
            assert_eq!(s.cmd(&format!("RCPT TO:<t{j}@local.test>")).code, 250);
        }
        assert_eq!(s.cmd("RSET").code, 250);
    }
    let mut s = m.alice(Port::Submission);
    for _ in 0..2 {
        assert_eq!(s.cmd(&format!("MAIL FROM:<{ALICE}>")).code, 250);
        assert_eq!(s.cmd("RSET").code, 250);
    }
    let r = s.cmd(&format!("MAIL FROM:<{ALICE}>"));
    assert_eq!((r.code, r.has("4.7.1")), (451, true), "alice's third message: {r:?}");
}

#[test]
fn oversized_header_block_is_refused_552() {
    let m = Mta::start(Opts { peer: false, extra: "[limits]\nmax_header_size = 2048\n", ..Opts::default() });
    let mut s = m.connect(Port::Smtp);
    s.ehlo();
    let mut big = String::from("Subject: big header\r\n");
    for i in 0..60 {
        big.push_str(&format!("X-Filler-{i:02}: {}\r\n", "h".repeat(60)));
    }
    big.push_str("\r\nbody\r\n");
    assert!(big.len() > 4096);
    let r = s.mail("stranger@elsewhere.test", &[CAROL], big.as_bytes()).expect_err("big header accepted");
    assert_eq!((r.code, r.has("5.3.4")), (552, true), "{r:?}");
    // A big body with a small header is fine.
    let body = format!("Subject: small header\r\n\r\n{}", format!("{}\r\n", "b".repeat(70)).repeat(100));
    s.mail("stranger@elsewhere.test", &[CAROL], body.as_bytes()).expect("small header refused");
    let mails = m.local_mail("carol", 1);
    assert!(contains(&mails[0], b"small header"));
    assert_eq!(m.t.settled_count(LOCAL, "carol"), 1, "the big message was delivered");
}

#[test]
fn overlong_command_line_is_refused_500() {
    let m = Mta::start(Opts { peer: false, ..Opts::default() });
    let mut s = m.connect(Port::Smtp);
    s.ehlo();
    let r = s.cmd(&format!("NOOP {}", "x".repeat(2000)));
    assert_eq!((r.code, r.has("5.5.2")), (500, true), "{r:?}");
    let r = s.cmd(&format!("MAIL FROM:<{}@local.test>", "a".repeat(1200)));
    assert_eq!((r.code, r.has("5.5.2")), (500, true), "{r:?}");
    // The session goes on.
    assert_eq!(s.cmd("NOOP").code, 250);
    s.mail("stranger@elsewhere.test", &[CAROL], &message("after-long-line", CAROL)).expect("mail after a long line");
}

#[test]
fn too_many_bad_commands_close_with_421() {
    let m = Mta::start(Opts { peer: false, extra: "[limits]\nmax_bad_commands = 3\n", ..Opts::default() });
    let mut s = m.connect(Port::Smtp);
    s.ehlo();
    assert_eq!(s.cmd("XYZZY").code / 100, 5);
    assert_eq!(s.cmd("RCPT TO:<a@local.test>").code, 503);
    s.send(b"FOO\r\n").expect("send");
    let replies = s.replies_until_quiet(Duration::from_secs(3));
    let codes: Vec<u16> = replies.iter().map(|r| r.code).collect();
    assert_eq!(codes.len(), 2, "{replies:?}");
    assert_eq!(codes[0] / 100, 5, "{replies:?}");
    assert!(replies[1].code == 421 && replies[1].has("4.7.0"), "{replies:?}");
    assert!(s.wait_closed(Duration::from_secs(5)), "connection left open after 421");
}

#[test]
fn talking_before_the_greeting_is_refused() {
    let m = Mta::start(Opts { peer: false, extra: "[limits]\ngreeting_delay = \"1s\"\n", ..Opts::default() });
    let mut raw = Raw::connect(m.t.port);
    raw.send(b"EHLO impatient.test\r\n").expect("send");
    let replies = raw.replies_until_quiet(Duration::from_secs(3));
    assert_eq!(replies.len(), 1, "{replies:?}");
    assert_eq!(replies[0].code, 554, "{replies:?}");
    assert!(raw.wait_closed(Duration::from_secs(5)), "talker left connected");
    // A patient client is greeted after the delay.
    let start = Instant::now();
    let mut raw = Raw::connect(m.t.port);
    let g = raw.reply();
    assert_eq!(g.code, 220, "{g:?}");
    assert!(start.elapsed() >= Duration::from_millis(900), "greeted after {:?}", start.elapsed());
    assert_eq!(raw.cmd("EHLO patient.test").code, 250);
}

#[test]
fn sighup_reloads_the_certificate_without_dropping_sessions() {
    let dir = tempfile::Builder::new().prefix("tern-cert-").tempdir().expect("tempdir");
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    make_certificate(dir.path(), "old.tern.test", &["rsa:2048"], &cert, &key);
    let extra = format!("[tls]\ncert = \"{}\"\nkey = \"{}\"\n", cert.display(), key.display());
    let m = Mta::start(Opts { peer: false, extra: &extra, ..Opts::default() });
    let subject = |port: u16, starttls: bool| {
        let addr = format!("127.0.0.1:{port}");
        let mut args = vec!["-connect", addr.as_str()];
        if starttls {
            args.extend(["-starttls", "smtp"]);
        }
        let out = s_client(&args);
        out.all().lines().find(|l| l.starts_with("subject=")).map(str::to_string).unwrap_or_default()
    };
    assert!(subject(m.t.port, true).contains("old.tern.test"), "{}", subject(m.t.port, true));
    let mut open = m.alice(Port::Submission);
    let mut open_implicit = m.alice(Port::Submissions);
    let old_der = open.peer_certificate().expect("certificate");

    // Replace the files (rename, as an ACME client would) and signal.
    let (new_cert, new_key) = (dir.path().join("new-cert.pem"), dir.path().join("new-key.pem"));
    make_certificate(dir.path(), "new.tern.test", EC, &new_cert, &new_key);
    fs::rename(&new_key, &key).expect("replace key");
    fs::rename(&new_cert, &cert).expect("replace certificate");
    m.sighup();
    assert!(m.wait_log("configuration reloaded", Duration::from_secs(10)), "no reload logged\n{}", m.t.logs());

    for (port, starttls) in [(m.t.port, true), (m.submission, true), (m.submissions, false)] {
        let s = subject(port, starttls);
        assert!(s.contains("new.tern.test"), "port {port}: {s}");
    }
    let fresh = m.tls(Port::Smtp);
    assert_ne!(fresh.peer_certificate().expect("certificate"), old_der, "new handshakes still get the old certificate");
    // The sessions opened before the reload still work.
    assert_eq!(open.ehlo().code, 250);
    open.mail(ALICE, &[CAROL], &message("before-reload-1", CAROL)).expect("old STARTTLS session");
    open_implicit.mail(ALICE, &[CAROL], &message("before-reload-2", CAROL)).expect("old implicit TLS session");
    assert_eq!(open.cmd("QUIT").code, 221);
    assert_eq!(m.local_mail("carol", 2).len(), 2);
}

#[test]
fn sighup_with_a_broken_certificate_keeps_the_old_one() {
    let dir = tempfile::Builder::new().prefix("tern-cert-").tempdir().expect("tempdir");
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    make_certificate(dir.path(), "old.tern.test", EC, &cert, &key);
    let extra = format!("[tls]\ncert = \"{}\"\nkey = \"{}\"\n", cert.display(), key.display());
    let mut m = Mta::start(Opts { peer: false, extra: &extra, ..Opts::default() });
    let out = s_client(&["-connect", &format!("127.0.0.1:{}", m.t.port), "-starttls", "smtp"]);
    assert!(out.all().contains("old.tern.test"), "{}", out.all());
    fs::write(&cert, "not a certificate\n").expect("break certificate");
    m.sighup();
    assert!(m.wait_log("reload failed; the running configuration stays", Duration::from_secs(10)), "{}", m.t.logs());
    assert!(m.t.logs().contains(": tls.cert: "), "the error names the key: {}", m.t.logs());
    assert!(m.t.is_running(), "tern stopped on a broken certificate");
    let out = s_client(&["-connect", &format!("127.0.0.1:{}", m.t.port), "-starttls", "smtp"]);
    assert!(out.all().contains("old.tern.test"), "{}", out.all());
}

#[test]
fn sighup_right_after_start_does_not_kill_the_server() {
    // SIGHUP means "reload the configuration": it must never end the server,
    // not even when it comes as soon as the server greets its first client.
    let t = Tern::new_stopped(LOCAL_OPEN, &[]);
    let mut deaths = Vec::new();
    let rounds = 10;
    for round in 0..rounds {
        let log = fs::File::create(t.path().join(format!("round-{round}.log"))).expect("log file");
        let mut child = std::process::Command::new(TERN_BIN)
            .args(["serve", "--config"])
            .arg(&t.config_path)
            .current_dir(t.path())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn tern");
        let deadline = Instant::now() + Duration::from_secs(20);
        let greeted = loop {
            if let Ok(mut tcp) = std::net::TcpStream::connect(("127.0.0.1", t.port)) {
                let _ = tcp.set_read_timeout(Some(Duration::from_secs(2)));
                let mut buf = [0u8; 3];
                if std::io::Read::read_exact(&mut tcp, &mut buf).is_ok() && &buf == b"220" {
                    break true;
                }
            }
            if Instant::now() > deadline {
                break false;
            }
            thread::sleep(Duration::from_millis(1));
        };
        // SAFETY: kill only sends a signal to the server this test started.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGHUP);
        }
        thread::sleep(Duration::from_millis(300));
        match child.try_wait() {
            Ok(Some(status)) => deaths.push(format!("round {round}: {status} (greeted: {greeted})")),
            _ => {
                let _ = child.kill();
            }
        }
        let _ = child.wait();
    }
    assert!(
        deaths.is_empty(),
        "{} of {rounds} servers died of a SIGHUP sent right after their first greeting:\n{}",
        deaths.len(),
        deaths.join("\n")
    );
}

#[test]
fn tls_1_0_and_1_1_are_refused() {
    let mut m = Mta::start(Opts { peer: false, ..Opts::default() });
    for (port, starttls) in [(m.t.port, true), (m.submission, true), (m.submissions, false)] {
        let addr = format!("127.0.0.1:{port}");
        for (version, works) in [("-tls1", false), ("-tls1_1", false), ("-tls1_2", true), ("-tls1_3", true)] {
            // SECLEVEL=0 lets the client offer the old versions at all.
            let mut args = vec!["-connect", addr.as_str(), version, "-cipher", "DEFAULT:@SECLEVEL=0"];
            if starttls {
                args.extend(["-starttls", "smtp"]);
            }
            let out = s_client(&args);
            let text = out.all();
            if works {
                assert!(out.success(), "{addr} {version} failed:\n{text}");
                let want = if version == "-tls1_2" { "TLSv1.2" } else { "TLSv1.3" };
                assert!(text.contains(&format!("New, {want}, Cipher is ")), "{addr} {version}:\n{text}");
            } else {
                assert!(!out.success(), "{addr} {version} was accepted:\n{text}");
                assert!(text.contains("New, (NONE), Cipher is (NONE)"), "{addr} {version}:\n{text}");
                assert!(text.contains("alert"), "{addr} {version}: not refused by the server:\n{text}");
            }
        }
    }
    assert!(m.t.is_running());
}

#[test]
fn user_add_passwd_del_round_trip() {
    let m = Mta::start(Opts { peer: false, users: &[], ..Opts::default() });
    let dave = "dave@local.test";
    let (pw1, pw2) = ("Dave-first-pw-Qx81", "Dave-second-pw-Zt55");
    let try_auth = |password: &str| -> u16 {
        let mut s = m.tls(Port::Submission);
        s.cmd(&format!("AUTH PLAIN {}", plain(dave, password))).code
    };
    assert_eq!(try_auth(pw1), 535, "unknown user authenticated");

    let out = m.user(&["add", dave], Some(pw1));
    out.assert_success("tern user add");
    assert!(!out.all().contains(pw1));
    assert_eq!(try_auth(pw1), 235, "added user cannot log in without a restart\n{}", m.t.logs());
    assert_eq!(try_auth("wrong"), 535);
    assert!(!m.user(&["add", dave], Some("other")).success(), "user added twice");
    assert!(!m.user(&["passwd", "nobody@local.test"], Some("x")).success(), "passwd for an unknown user");

    m.user(&["passwd", dave], Some(pw2)).assert_success("tern user passwd");
    assert_eq!(try_auth(pw1), 535, "the old password still works");
    assert_eq!(try_auth(pw2), 235, "the new password does not work");
    // LOGIN as well as PLAIN, with the user name in another case.
    let mut s = m.tls(Port::Submission);
    assert_eq!(s.auth_login("Dave@LOCAL.test", pw2).code, 235);
    s.mail(dave, &[CAROL], &message("from-dave", CAROL)).expect("dave sends");

    let users_file = m.t.data_dir.join("users.toml");
    let text = fs::read_to_string(&users_file).expect("users file");
    let hashes: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains(" = "))
        .map(|l| l.split(" = ").nth(1).unwrap_or(""))
        .collect();
    assert_eq!(hashes.len(), 1, "{text}");
    for h in &hashes {
        assert!(h.trim_matches('"').starts_with("$argon2id$"), "not an argon2id hash: {h}");
    }
    for secret in [pw1, pw2] {
        assert!(!text.contains(secret), "password in the users file:\n{text}");
    }
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(&users_file).expect("stat users file").permissions().mode() & 0o777;
    assert_eq!(mode & 0o077, 0, "users file readable by others: {mode:o}");

    m.user(&["del", dave], None).assert_success("tern user del");
    assert_eq!(try_auth(pw2), 535, "deleted user still logs in");
    assert!(!m.user(&["del", dave], None).success(), "deleting twice succeeded");

    let logs = m.t.logs();
    for secret in [pw1.to_string(), pw2.to_string(), plain(dave, pw1), plain(dave, pw2), b64(pw2.as_bytes())] {
        assert!(!logs.contains(&secret), "secret {secret:?} in the server log");
    }
}

// ---------------------------------------------------------------------------
// The open-relay matrix.

/// An address trick and, if it is accepted at all, the local mailbox
/// (`domain directory`, `mailbox`) it really names.
struct Trick {
    rcpt: &'static str,
    smtputf8: bool,
    local: Option<(&'static str, &'static str)>,
}

const fn trick(rcpt: &'static str, local: Option<(&'static str, &'static str)>) -> Trick {
    Trick { rcpt, smtputf8: false, local }
}

const TRICKS: &[Trick] = &[
    trick("<user@remote.test>", None),
    trick("<user@REMOTE.TEST.>", None),
    trick("<user%remote.test@local.test>", Some(("local.test", "user%remote.test"))),
    trick("<\"user@remote.test\"@local.test>", Some(("local.test", "user@remote.test"))),
    trick("<\"user%remote.test\"@local.test>", Some(("local.test", "user%remote.test"))),
    trick("<@local.test:user@remote.test>", None),
    trick("<@local.test,@local.test:user@remote.test>", None),
    trick("<@remote.test:user@local.test>", Some(("local.test", "user"))),
    trick("<user@remote.test@local.test>", None),
    trick("<user@local.test@remote.test>", None),
    trick("<remote.test!user@local.test>", Some(("local.test", "remote.test!user"))),
    trick("<user@[127.0.0.2]>", None),
    trick("<user@[127.0.0.1]>", None),
    trick("<user@[IPv6:::1]>", None),
    trick("<USER@LOCAL.TEST.>", Some(("local.test", "user"))),
    trick("<user+bob=remote.test@local.test>", Some(("local.test", "user"))),
    trick("user@remote.test", None),
    trick("<user@remote.test> NOTIFY=NEVER", None),
    trick("<user@xn--bcher-kva.test>", Some(("bücher.test", "user"))),
    trick("<user@xn--mller-kva.test>", None),
    Trick { rcpt: "<user@bücher.test>", smtputf8: true, local: Some(("bücher.test", "user")) },
    Trick { rcpt: "<user@BÜCHER.test>", smtputf8: true, local: Some(("bücher.test", "user")) },
    Trick { rcpt: "<user@müller.test>", smtputf8: true, local: None },
    Trick { rcpt: "<user@MÜLLER.TEST.>", smtputf8: true, local: None },
];

/// What happened to one trick.
#[derive(Debug)]
struct Outcome {
    rcpt: &'static str,
    /// The RCPT (or MAIL) reply.
    reply: Reply,
    /// The token of the message sent when the recipient was accepted.
    token: Option<String>,
}

/// Tries every trick on the session `open` makes, one transaction each,
/// opening a new session when the server closes one.
fn run_tricks(state: &str, open: &dyn Fn() -> Smtp) -> Vec<Outcome> {
    let mut s = open();
    let mut out = Vec::new();
    for (i, t) in TRICKS.iter().enumerate() {
        if s.closed {
            s = open();
        }
        let utf8 = if t.smtputf8 { " SMTPUTF8" } else { "" };
        let r = s.cmd(&format!("MAIL FROM:<probe@elsewhere.test>{utf8}"));
        if r.code != 250 {
            // MAIL refused (submission without AUTH): RCPT must fail too.
            let rr = s.cmd(&format!("RCPT TO:{}", t.rcpt));
            assert!(rr.code >= 500, "{state}: RCPT {} accepted without MAIL: {rr:?}", t.rcpt);
            out.push(Outcome { rcpt: t.rcpt, reply: r, token: None });
            continue;
        }
        let r = s.cmd(&format!("RCPT TO:{}", t.rcpt));
        if r.code != 250 {
            assert!(r.code >= 500, "{state}: RCPT {} got a temporary refusal: {r:?}", t.rcpt);
            let _ = s.cmd("RSET");
            out.push(Outcome { rcpt: t.rcpt, reply: r, token: None });
            continue;
        }
        let token = format!("relay-probe-{}-n{i:02}-end", state.replace(' ', "-"));
        let content = format!("Subject: {token}\r\n\r\n{token}\r\n");
        match s.cmd("DATA").code {
            354 => {}
            code => panic!("{state}: DATA after accepted RCPT {}: {code}", t.rcpt),
        }
        s.send(format!("{content}.\r\n").as_bytes()).expect("send content");
        let r2 = s.reply();
        assert_eq!(r2.code, 250, "{state}: message to {} not queued: {r2:?}", t.rcpt);
        out.push(Outcome { rcpt: t.rcpt, reply: r, token: Some(token) });
    }
    out
}

/// Every accepted trick landed in the local mailbox it names; nothing else
/// was delivered; the peer never heard of any of it.
#[track_caller]
fn assert_no_relay(m: &Mta, state: &str, outcomes: &[Outcome]) {
    let mut report = String::new();
    for o in outcomes {
        let t = TRICKS.iter().find(|t| t.rcpt == o.rcpt).expect("trick");
        report.push_str(&format!("{state}: {} -> {}\n", o.rcpt, o.reply.lines[0]));
        let Some(token) = &o.token else { continue };
        let Some((domain, mailbox)) = t.local else {
            panic!("{state}: {} was accepted ({:?}) but names no local mailbox\n{report}", o.rcpt, o.reply);
        };
        let want = m.t.mail_root().join(domain).join(mailbox).join("new");
        let deadline = Instant::now() + Duration::from_secs(15);
        let found = loop {
            let found = find_token(&m.t.mail_root(), token);
            if !found.is_empty() || Instant::now() > deadline {
                break found;
            }
            thread::sleep(Duration::from_millis(100));
        };
        assert_eq!(found.len(), 1, "{state}: {} delivered {} times: {found:?}\n{report}", o.rcpt, found.len());
        assert_eq!(
            found[0].parent(),
            Some(want.as_path()),
            "{state}: {} delivered to the wrong mailbox\n{report}",
            o.rcpt
        );
    }
    eprint!("{report}");
    // Give the queue time to try any remote delivery it might have taken on.
    thread::sleep(Duration::from_secs(2));
    let queue = m.t.queue_list().all();
    assert!(!queue.contains("remote.test") && !queue.contains("127.0.0.2"), "{state}: queued for relay:\n{queue}");
    m.peer().assert_untouched(state);
}

/// Opens a session in some state.
type Opener<'a> = Box<dyn Fn() -> Smtp + 'a>;

fn matrix_opts() -> Opts<'static> {
    Opts { extra: "[limits]\nmax_bad_commands = 1000\n\n[auth]\nmax_failures = 1000\n", ..Opts::default() }
}

#[test]
fn open_relay_matrix_port_25_plain_and_after_starttls() {
    let m = Mta::start(matrix_opts());
    let plain_session = || {
        let mut s = m.connect(Port::Smtp);
        s.ehlo();
        s
    };
    let outcomes = run_tricks("port 25 plain", &plain_session);
    // Sanity: plain local addresses are accepted here, so the matrix tests something.
    assert!(outcomes.iter().any(|o| o.token.is_some()), "nothing accepted at all");
    assert_no_relay(&m, "port 25 plain", &outcomes);
    let tls_session = || m.tls(Port::Smtp);
    let outcomes = run_tricks("port 25 after STARTTLS", &tls_session);
    assert_no_relay(&m, "port 25 after STARTTLS", &outcomes);
}

#[test]
fn open_relay_matrix_after_failed_auth_and_rset() {
    let m = Mta::start(matrix_opts());
    let mta = &m;
    let failed_auth = |port: Port| {
        move || {
            let m = mta;
            let mut s = m.tls(port);
            let r = s.cmd(&format!("AUTH PLAIN {}", plain(ALICE, "not the password")));
            assert_eq!(r.code, 535, "{r:?}");
            s
        }
    };
    let outcomes = run_tricks("port 25 after failed AUTH", &failed_auth(Port::Smtp));
    assert_no_relay(&m, "port 25 after failed AUTH", &outcomes);
    let outcomes = run_tricks("submission after failed AUTH", &failed_auth(Port::Submission));
    assert!(outcomes.iter().all(|o| o.reply.code == 530), "{outcomes:?}");
    assert_no_relay(&m, "submission after failed AUTH", &outcomes);

    // RSET, a second EHLO and a second transaction do not change who the client is.
    let mut s = m.connect(Port::Smtp);
    s.ehlo();
    assert_eq!(s.cmd("MAIL FROM:<probe@elsewhere.test>").code, 250);
    assert_eq!(s.cmd(&format!("RCPT TO:<{CAROL}>")).code, 250);
    assert_eq!(s.cmd("RSET").code, 250);
    assert_eq!(s.cmd(&format!("RCPT TO:<{BOB}>")).code, 503, "RCPT after RSET without MAIL");
    assert_eq!(s.cmd("MAIL FROM:<probe@elsewhere.test>").code, 250);
    assert_eq!(s.cmd(&format!("RCPT TO:<{BOB}>")).code, 554);
    assert_eq!(s.cmd("RSET").code, 250);
    s.ehlo();
    assert_eq!(s.cmd(&format!("MAIL FROM:<{ALICE}>")).code, 250);
    assert_eq!(s.cmd(&format!("RCPT TO:<{BOB}>")).code, 554);
    let rset_session = || {
        let mut s = m.connect(Port::Smtp);
        s.ehlo();
        assert_eq!(s.cmd("MAIL FROM:<probe@elsewhere.test>").code, 250);
        assert_eq!(s.cmd(&format!("RCPT TO:<{CAROL}>")).code, 250);
        assert_eq!(s.cmd("RSET").code, 250);
        s
    };
    let outcomes = run_tricks("port 25 after RSET", &rset_session);
    assert_no_relay(&m, "port 25 after RSET", &outcomes);
}

#[test]
fn open_relay_matrix_on_submission_ports_without_auth() {
    let m = Mta::start(matrix_opts());
    let sessions: [(&str, Opener<'_>); 3] = [
        (
            "submission plain",
            Box::new(|| {
                let mut s = m.connect(Port::Submission);
                s.ehlo();
                s
            }),
        ),
        ("submission after STARTTLS", Box::new(|| m.tls(Port::Submission))),
        ("submissions", Box::new(|| m.tls(Port::Submissions))),
    ];
    for (state, open) in &sessions {
        let outcomes = run_tricks(state, open.as_ref());
        for o in &outcomes {
            assert_eq!((o.reply.code, o.reply.has("5.7.0")), (530, true), "{state}: {o:?}");
        }
        assert_no_relay(&m, state, &outcomes);
    }
    assert!(m.t.all_delivered().is_empty(), "{:?}", m.t.all_delivered());
}

#[test]
fn alias_to_a_remote_address_is_delivered_but_its_target_is_fixed() {
    let aliases = "\"fwd@local.test\" = [\"bob@remote.test\"]\n\"team@local.test\" = [\"carol@local.test\", \"bob@remote.test\"]\n";
    let m = Mta::start(Opts { aliases, ..matrix_opts() });
    let mut s = m.connect(Port::Smtp);
    s.ehlo();
    let probes: &[(&str, Option<&str>)] = &[
        ("<fwd@local.test>", Some("bob")),
        ("<FWD@LOCAL.TEST.>", Some("bob")),
        ("<fwd+eve=remote.test@local.test>", Some("bob")),
        ("<team@local.test>", Some("bob")),
        ("<eve@remote.test>", None),
        ("<fwd@remote.test>", None),
        ("<@local.test:eve@remote.test>", None),
        ("<\"fwd@remote.test\"@local.test>", None),
        ("<fwd%eve@local.test>", None),
        ("<eve%remote.test@local.test>", None),
    ];
    let mut to_bob = Vec::new();
    for (i, (rcpt, target)) in probes.iter().enumerate() {
        assert_eq!(s.cmd("MAIL FROM:<probe@elsewhere.test>").code, 250);
        let r = s.cmd(&format!("RCPT TO:{rcpt}"));
        if target.is_some() {
            assert_eq!(r.code, 250, "{rcpt}: alias refused: {r:?}");
        }
        if r.code != 250 {
            assert!(r.code >= 500, "{rcpt}: {r:?}");
            assert_eq!(s.cmd("RSET").code, 250);
            continue;
        }
        let token = format!("alias-probe-n{i:02}-end");
        assert_eq!(s.cmd("DATA").code, 354);
        s.send(format!("Subject: {token}\r\n\r\n{token}\r\n.\r\n").as_bytes()).expect("send");
        assert_eq!(s.reply().code, 250, "{rcpt}");
        if target.is_some() {
            to_bob.push(token);
        } else {
            // Accepted without an alias: it must stay local.
            let deadline = Instant::now() + Duration::from_secs(15);
            while find_token(&m.t.mail_root(), &token).is_empty() {
                assert!(Instant::now() < deadline, "{rcpt}: not delivered locally\n{}", m.t.logs());
                thread::sleep(Duration::from_millis(100));
            }
        }
    }
    let at_bob = m.remote_mail("bob", to_bob.len());
    assert_eq!(at_bob.len(), to_bob.len(), "the alias target got the wrong number of messages");
    for token in &to_bob {
        assert!(at_bob.iter().any(|msg| contains(msg, token.as_bytes())), "{token} did not reach bob");
    }
    thread::sleep(Duration::from_secs(2));
    let peer_files = m.peer().delivered();
    let bob_dir = m.peer().t.maildir(REMOTE, "bob").join("new");
    for f in &peer_files {
        assert_eq!(f.parent(), Some(bob_dir.as_path()), "the peer got mail outside the alias target: {f:?}");
    }
    assert_eq!(peer_files.len(), to_bob.len(), "{peer_files:?}");
    // team@ also reached carol locally.
    assert_eq!(m.local_mail("carol", 1).len(), 1);
}

/// rustls's warnings about a client's SNI name no client, so they are not logged:
/// an IP address as SNI (ignored, the handshake goes on) leaves no warning, and an
/// illegal name leaves one line naming the client and its failed handshake.
#[test]
fn a_clients_bad_sni_is_one_clear_line() {
    let m = Mta::start(Opts { peer: false, ..Opts::default() });
    wait_connections_ended(&m);
    for sni in ["192.0.2.1", "bad_name..test"] {
        let mut cmd = std::process::Command::new("openssl");
        cmd.args(["s_client", "-starttls", "smtp", "-servername", sni])
            .args(["-connect", &format!("127.0.0.1:{}", m.t.port)]);
        let _ = run_with_input(cmd, Some(b"QUIT\r\n"), CLIENT_TIMEOUT);
    }
    assert!(m.wait_log("ServerNameMustContainOneHostName", Duration::from_secs(10)), "{}", m.t.logs());
    wait_connections_ended(&m);
    let logs = m.t.logs();
    assert!(!logs.contains("rustls"), "{logs}");
    let failed: Vec<&str> = logs.lines().filter(|l| l.contains("ServerName")).collect();
    assert_eq!(failed.len(), 1, "{logs}");
    assert!(failed[0].contains("client=127.0.0.1:"), "{logs}");
}
