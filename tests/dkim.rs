//! DKIM end to end: Tern signs what its users and relay clients send, and
//! checks DKIM, ARC, SPF and DMARC on what strangers send it; dkimpy checks
//! Tern's signatures and makes the signatures and ARC sets Tern checks.
//!
//! Keys come from `tern dkim keygen`; the records it prints are served by
//! the test DNS server. A signing Tern ("A") relays `b.test` through
//! `[relay.routes]` either to a second Tern ("B", which treats loopback
//! clients as strangers) or to a fake SMTP server that keeps the messages
//! exactly as they arrived (helpers in `common::dkim`). Everything stays on
//! loopback.

mod common;

use common::dkim::*;
use common::outbound::*;
use common::*;

// ---------------------------------------------------------------------------
// Tern signs, the next Tern verifies.

/// A signs with a key of `alg`, relays to B; B finds the signature valid
/// and DMARC (p=reject) passing.
fn relay_signed_and_verify(alg: Alg) {
    let key = keygen(SIGNER, "s1", alg);
    let dns = DnsServer::start(&zone(&[&key], Some(DMARC_REJECT), &[]));
    let b = receiver(&dns, "");
    let a = signer(&[&key], b.port);
    let msg = message(&format!("signed with {}", alg.short()));
    send_message(&a, ALICE, &[BOB], &msg, &[]);
    let stored = b.wait_mail_within(RECEIVER, "bob", 1, DELIVERY);
    assert_eq!(stored.len(), 1);
    let stored = &stored[0];
    assert_delivered(stored, ALICE, &msg);
    let sig = signature(stored);
    assert_eq!(sig.get("a").map(String::as_str), Some(alg.name()), "{sig:?}");
    assert_results(stored, "pass", &[("pass", SIGNER, "s1")], "none", "pass");
    wait_queue_empty(&a, DELIVERY);
}

#[test]
fn relayed_mail_signed_with_rsa_passes_dkim_and_dmarc_at_the_next_tern() {
    relay_signed_and_verify(Alg::Rsa);
}

#[test]
fn relayed_mail_signed_with_ed25519_passes_dkim_and_dmarc_at_the_next_tern() {
    relay_signed_and_verify(Alg::Ed25519);
}

#[test]
fn message_changed_after_signing_fails_dkim_and_is_refused_under_dmarc_reject() {
    let key = keygen(SIGNER, "s1", Alg::Rsa);
    let cap = Capture::start(&[&key]);
    let signed = cap.relay(ALICE, &message("tampered"));
    let tampered = tamper_body(&signed);
    let dns = DnsServer::start(&zone(&[&key], Some(DMARC_REJECT), &[]));
    let b = receiver(&dns, "");

    // Intact, with an envelope sender of another domain: DMARC passes
    // through the aligned DKIM signature alone.
    let intact = deliver(&b, "bounce@other.test", "bob@b.test", &signed);
    assert_results(&intact, "pass", &[("pass", SIGNER, "s1")], "none", "pass");

    // Changed, with an aligned envelope sender: DKIM fails, SPF carries DMARC.
    let changed = deliver(&b, ALICE, "carol@b.test", &tampered);
    assert_results(&changed, "pass", &[("fail", SIGNER, "s1")], "none", "pass");

    // A signed header field changed: the signature itself no longer verifies.
    let resubjected = replace_after(&signed, b"\r\nSubject: ", b"tampered", b"tamperEd");
    let changed = deliver(&b, ALICE, "erin@b.test", &resubjected);
    assert_results(&changed, "pass", &[("fail", SIGNER, "s1")], "none", "pass");

    // Changed, with nothing aligned: DMARC fails and p=reject refuses it.
    let r = submit(&b, "bounce@other.test", "dave@b.test", &tampered);
    assert_eq!(r.code, 550, "a DMARC p=reject failure: {r:?}\n{}", b.logs());
    assert!(r.has("5.7.1"), "{r:?}");
    assert_eq!(b.settled_count(RECEIVER, "dave"), 0, "the refused message was delivered");
}

// ---------------------------------------------------------------------------
// What Tern signs.

#[test]
fn signature_covers_the_expected_header_fields() {
    let key = keygen(SIGNER, "s1", Alg::Rsa);
    let cap = Capture::start(&[&key]);
    // The envelope sender's domain has no key: the From: header decides.
    let relayed = cap.relay("bounce@other.test", &message("header set"));
    let sig = signature(&relayed);
    let get = |t: &str| sig.get(t).map(String::as_str);
    assert_eq!(get("v"), Some("1"), "{sig:?}");
    assert_eq!(get("a"), Some("rsa-sha256"), "{sig:?}");
    assert_eq!(get("c"), Some("relaxed/relaxed"), "{sig:?}");
    assert_eq!(get("d"), Some(SIGNER), "{sig:?}");
    assert_eq!(get("s"), Some("s1"), "{sig:?}");
    assert!(get("bh").is_some_and(|v| !v.is_empty()), "{sig:?}");
    assert!(get("b").is_some_and(|v| !v.is_empty()), "{sig:?}");
    assert_eq!(get("l"), None, "no body length limit expected: {sig:?}");
    let h: Vec<String> = get("h").unwrap_or_default().split(':').map(|n| n.trim().to_ascii_lowercase()).collect();
    assert_eq!(h.iter().filter(|n| *n == "from").count(), 2, "From: is not oversigned: h={h:?}");
    for name in ["subject", "date", "to", "message-id"] {
        assert!(h.iter().any(|n| n == name), "{name} not signed: h={h:?}");
    }
    for name in ["dkim-signature", "received", "return-path"] {
        assert!(!h.iter().any(|n| n == name), "{name} must not be signed: h={h:?}");
    }
    assert_eq!(dkimpy_verify(cap.a.path(), &relayed, &key), "pass", "dkimpy on:\n{}", show(&relayed));
}

#[test]
fn large_mail_is_signed_as_it_arrives() {
    require_dkimpy();
    let key = keygen(SIGNER, "s1", Alg::Ed25519);
    let cap = Capture::start(&[&key]);
    // About 3 MiB, far past what Tern keeps in memory, with what relaxed body
    // canonicalization changes (runs of spaces, trailing blanks, empty lines at the end).
    let mut msg = message("large");
    msg.truncate(msg.len() - 4);
    for i in 0..40_000 {
        msg.extend_from_slice(format!("line {i}  with   runs of\tspaces and a trailing blank \t\r\n").as_bytes());
    }
    msg.extend_from_slice(b"\r\n\r\n\r\n");
    let relayed = cap.relay(ALICE, &msg);
    assert_eq!(signature(&relayed).get("d").map(String::as_str), Some(SIGNER));
    assert_eq!(dkimpy_verify(cap.a.path(), &relayed, &key), "pass");
}

#[test]
fn mail_whose_from_domain_has_no_key_is_not_signed() {
    let key = keygen(SIGNER, "s1", Alg::Rsa);
    let cap = Capture::start(&[&key]);
    // The envelope sender's domain has a key, the From: header's has not.
    let relayed = cap.relay(ALICE, &message_from("Carol <carol@other.test>", "no key"));
    assert!(values(&relayed, "DKIM-Signature").is_empty(), "signed for other.test:\n{}", show(&relayed));
}

#[test]
fn mail_from_a_stranger_is_checked_and_not_signed() {
    let key = keygen(SIGNER, "s1", Alg::Rsa);
    let dns = DnsServer::start(&zone(&[&key], None, &[]));
    // B holds a key for a.test, but the client is a stranger.
    let b = receiver(&dns, &key.config());
    let msg = message("from a stranger");
    let stored = deliver(&b, ALICE, BOB, &msg);
    assert!(values(&stored, "DKIM-Signature").is_empty(), "a stranger's mail was signed:\n{}", show(&stored));
    assert_results(&stored, "pass", &[("none", "", "")], "none", "none");
}

#[test]
fn results_forged_in_terns_name_are_not_kept() {
    let dns = DnsServer::start(&zone(&[], None, &[]));
    let b = receiver(&dns, "");
    let msg = message("forged results");
    let forged = [
        format!("Authentication-Results: {HOSTNAME}; dkim=pass header.d={SIGNER} header.s=s1; dmarc=pass\r\n")
            .as_bytes(),
        &msg[..],
    ]
    .concat();
    let r = submit(&b, ALICE, BOB, &forged);
    assert_eq!(r.code, 250, "{r:?}\n{}", b.logs());
    let stored = b.wait_one(RECEIVER, "bob");
    let (_, body) = split_message(&msg);
    assert!(stored.ends_with(body), "the body changed:\n{}", show(&stored));
    // Only Tern's own results remain under its name.
    assert_results(&stored, "pass", &[("none", "", "")], "none", "none");
}

#[test]
fn mail_from_an_authenticated_user_is_signed() {
    let msg = common::security::message("authenticated-signed", common::security::BOB);
    submitted_and_signed(&msg);
}

#[test]
fn headers_added_to_submitted_mail_are_signed_too() {
    // Without Date and Message-ID Tern adds both (RFC 6409 §8.2, §8.3) before signing.
    let full = common::security::message("added-and-signed", common::security::BOB);
    let text = String::from_utf8(full).expect("ASCII message");
    let bare: String =
        text.split_inclusive("\r\n").filter(|l| !l.starts_with("Date:") && !l.starts_with("Message-ID:")).collect();
    let stored = submitted_and_signed(bare.as_bytes());
    assert_eq!(values(&stored, "Date").len(), 1, "{}", show(&stored));
    assert_eq!(values(&stored, "Message-ID").len(), 1, "{}", show(&stored));
}

/// `msg` submitted by an authenticated user (relaying closed) and delivered to the
/// next server: signed with the user's domain key, which dkimpy finds valid.
fn submitted_and_signed(msg: &[u8]) -> Vec<u8> {
    use common::security::{ALICE as USER, BOB as PEER_USER, Mta, Opts, Port};
    require_dkimpy();
    let domain = USER.split_once('@').expect("address").1;
    let key = keygen(domain, "sub", Alg::Ed25519);
    // Loopback clients are strangers here: only the authentication counts.
    let m = Mta::start(Opts { extra: &key.config(), ..Opts::default() });
    let file = m.write("msg.eml", msg);
    let out = m.swaks(
        Port::Submission,
        &[
            "--tls",
            "--auth",
            "PLAIN",
            "--auth-user",
            USER,
            "--auth-password",
            common::security::ALICE_PW,
            "-f",
            USER,
            "-t",
            PEER_USER,
            "--data",
            &format!("@{file}"),
        ],
    );
    out.assert_success("swaks --tls --auth PLAIN");
    let stored = m.remote_mail(PEER_USER.split_once('@').expect("address").0, 1);
    assert_eq!(stored.len(), 1);
    let sig = signature(&stored[0]);
    assert_eq!(sig.get("d").map(String::as_str), Some(domain), "{sig:?}");
    assert_eq!(sig.get("s").map(String::as_str), Some("sub"), "{sig:?}");
    assert_eq!(sig.get("a").map(String::as_str), Some("ed25519-sha256"), "{sig:?}");
    assert_eq!(dkimpy_verify(m.t.path(), &stored[0], &key), "pass", "dkimpy on:\n{}", show(&stored[0]));
    stored.into_iter().next().expect("one message")
}

#[test]
fn tern_signs_with_keys_made_by_openssl() {
    require_dkimpy();
    let rsa = openssl_key(SIGNER, "o1", Alg::Rsa);
    let ed = openssl_key("c.test", "o2", Alg::Ed25519);
    let cap = Capture::start(&[&rsa, &ed]);
    for (key, from) in [(&rsa, format!("Alice <{ALICE}>")), (&ed, "Carol <carol@c.test>".to_string())] {
        let msg = message_from(&from, &format!("openssl {}", key.alg.short()));
        let relayed = cap.relay(ALICE, &msg);
        let sig = signature(&relayed);
        let get = |t: &str| sig.get(t).map(String::as_str);
        assert_eq!((get("d"), get("s"), get("a")), (Some(&*key.domain), Some(&*key.selector), Some(key.alg.name())));
        assert_eq!(dkimpy_verify(cap.a.path(), &relayed, key), "pass", "dkimpy on:\n{}", show(&relayed));
    }
}

// ---------------------------------------------------------------------------
// Interoperability with dkimpy.

/// A signs with a key of `alg`; dkimpy verifies the signature as relayed,
/// and finds it broken once the body changes.
fn dkimpy_checks_tern(alg: Alg) {
    require_dkimpy();
    let key = keygen(SIGNER, "s1", alg);
    let cap = Capture::start(&[&key]);
    let relayed = cap.relay(ALICE, &message(&format!("dkimpy checks {}", alg.short())));
    assert_eq!(signature(&relayed).get("a").map(String::as_str), Some(alg.name()));
    assert_eq!(dkimpy_verify(cap.a.path(), &relayed, &key), "pass", "dkimpy on:\n{}", show(&relayed));
    assert_eq!(dkimpy_verify(cap.a.path(), &tamper_body(&relayed), &key), "fail", "dkimpy on a changed body");
}

#[test]
fn dkimpy_verifies_an_rsa_signature_by_tern() {
    dkimpy_checks_tern(Alg::Rsa);
}

#[test]
fn dkimpy_verifies_an_ed25519_signature_by_tern() {
    dkimpy_checks_tern(Alg::Ed25519);
}

#[test]
fn tern_verifies_an_rsa_signature_by_dkimpy() {
    require_dkimpy();
    let key = keygen(SIGNER, "s1", Alg::Rsa);
    let dns = DnsServer::start(&zone(&[&key], Some(DMARC_REJECT), &[]));
    let b = receiver(&dns, "");
    // dkimpy's default canonicalization, relaxed/simple.
    let signed = dkimpy_sign(b.path(), &message("dkimpy rsa"), &key, "relaxed/simple");
    let stored = deliver(&b, "bounce@other.test", BOB, &signed);
    assert_results(&stored, "pass", &[("pass", SIGNER, "s1")], "none", "pass");
    // The same signature over a changed body.
    let stored = deliver(&b, ALICE, "carol@b.test", &tamper_body(&signed));
    assert_results(&stored, "pass", &[("fail", SIGNER, "s1")], "none", "pass");
}

#[test]
fn tern_verifies_an_ed25519_signature_by_dkimpy() {
    require_dkimpy();
    let key = keygen(SIGNER, "e1", Alg::Ed25519);
    let dns = DnsServer::start(&zone(&[&key], Some(DMARC_REJECT), &[]));
    let b = receiver(&dns, "");
    let signed = dkimpy_sign(b.path(), &message("dkimpy ed25519"), &key, "relaxed/relaxed");
    let stored = deliver(&b, "bounce@other.test", BOB, &signed);
    assert_results(&stored, "pass", &[("pass", SIGNER, "e1")], "none", "pass");
}

#[test]
fn tern_reports_each_signature_of_a_doubly_signed_message() {
    require_dkimpy();
    let rsa = keygen(SIGNER, "s1", Alg::Rsa);
    let ed = keygen(SIGNER, "e1", Alg::Ed25519);
    let dns = DnsServer::start(&zone(&[&rsa, &ed], None, &[]));
    let b = receiver(&dns, "");
    // RFC 8463 §4: an Ed25519 signature beside an RSA one; simple/simple this time.
    let once = dkimpy_sign(b.path(), &message("two signatures"), &ed, "simple/simple");
    let twice = dkimpy_sign(b.path(), &once, &rsa, "simple/simple");
    let stored = deliver(&b, ALICE, BOB, &twice);
    assert_results(&stored, "pass", &[("pass", SIGNER, "s1"), ("pass", SIGNER, "e1")], "none", "none");
}

// ---------------------------------------------------------------------------
// ARC.

/// Sends a message sealed by dkimpy (as the forwarder `fwd.test`, after its
/// own Authentication-Results), changed by `change`, to B from the
/// forwarder; returns Tern's arc= verdict and its Authentication-Results.
fn arc_verdict(change: impl Fn(&[u8]) -> Vec<u8>) -> (String, String) {
    arc_verdict_on(&message("arc sealed"), change)
}

/// Like `arc_verdict`, for `msg`.
fn arc_verdict_on(msg: &[u8], change: impl Fn(&[u8]) -> Vec<u8>) -> (String, String) {
    require_dkimpy();
    const SEALER: &str = "fwd.test";
    let seal = keygen(SEALER, "arc", Alg::Rsa);
    let dns = DnsServer::start(&zone(&[&seal], None, &[SEALER]));
    let b = receiver(&dns, "");
    let received =
        [format!("Authentication-Results: {SEALER}; spf=pass smtp.mailfrom={ALICE}; dkim=none\r\n").as_bytes(), msg]
            .concat();
    let sealed = change(&dkimpy_seal(b.path(), &received, &seal));
    let stored = deliver(&b, "list@fwd.test", BOB, &sealed);
    let header = values(&stored, "Authentication-Results").join("\n");
    // The message as sealed carries no DKIM signature and no DMARC record applies.
    assert_eq!(dkim_results(&stored), [triple("none", "", "")], "{header}");
    assert_eq!(verdict(&stored, "dmarc"), "none", "{header}");
    (verdict(&stored, "arc"), header)
}

#[test]
fn arc_chain_sealed_by_dkimpy_passes() {
    let (arc, header) = arc_verdict(|m| m.to_vec());
    assert_eq!(arc, "pass", "{header}");
}

#[test]
fn arc_chain_over_a_body_ending_in_a_whitespace_only_line_passes() {
    let msg = [&message("arc sealed")[..], b"Bye again.\r\n \t\r\n"].concat();
    let (arc, header) = arc_verdict_on(&msg, |m| m.to_vec());
    assert_eq!(arc, "pass", "{header}");
}

#[test]
fn arc_chain_with_a_changed_sealed_verdict_fails() {
    // A verdict changed inside the sealed ARC-Authentication-Results: the ARC-Seal breaks.
    let (arc, header) = arc_verdict(|m| replace_after(m, b"ARC-Authentication-Results:", b"spf=pass", b"spf=fail"));
    assert_eq!(arc, "fail", "{header}");
}

#[test]
fn arc_chain_with_the_body_changed_after_sealing_fails() {
    // The newest ARC-Message-Signature no longer matches the body (RFC 8617 §5.2 step 4).
    let (arc, header) = arc_verdict(tamper_body);
    assert_eq!(arc, "fail", "{header}");
}

#[test]
fn a_trusted_forwarders_arc_seal_outweighs_a_dmarc_failure() {
    // A list at fwd.test relays alice@a.test's mail under its own envelope sender:
    // SPF passes for fwd.test, which is not aligned with a.test, and a.test says
    // p=reject. The list sealed the chain; only a receiver that trusts it delivers.
    require_dkimpy();
    const SEALER: &str = "fwd.test";
    let seal = keygen(SEALER, "arc", Alg::Rsa);
    let dns = DnsServer::start(&zone(&[&seal], Some(DMARC_REJECT), &[SEALER]));
    let received = [
        format!("Authentication-Results: {SEALER}; spf=pass smtp.mailfrom={ALICE}; dmarc=pass\r\n").as_bytes(),
        &message("via the list")[..],
    ]
    .concat();
    let strict = receiver(&dns, "");
    let sealed = dkimpy_seal(strict.path(), &received, &seal);
    let refused = submit(&strict, "list@fwd.test", BOB, &sealed);
    assert_eq!(refused.code, 550, "{refused:?}");
    assert!(refused.has("5.7.1"), "{refused:?}");

    let trusting = receiver(&dns, &format!("[auth_checks]\ntrusted_arc_sealers = [\"{SEALER}\"]\n"));
    let stored = deliver(&trusting, "list@fwd.test", BOB, &sealed);
    let header = values(&stored, "Authentication-Results").join("\n");
    assert_eq!(verdict(&stored, "arc"), "pass", "{header}");
    assert_eq!(verdict(&stored, "dmarc"), "fail", "{header}");
    assert!(header.contains("sealed by trusted fwd.test"), "{header}");
}
