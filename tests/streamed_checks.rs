//! The checks of mail from strangers (DKIM, ARC, DMARC) stream: the body hashes are
//! made as the content arrives and only the header block is parsed, so a large signed
//! message is checked in bounded memory, and a change anywhere in its body is seen.

mod common;

use common::dkim::*;
use common::outbound::*;
use common::{proc_status, reset_peak};
use tern::config::{DkimAlgorithm, DkimKey};
use tern::policy::dkim::Signer;

const MIB: usize = 1 << 20;

/// A message from Alice of about `size` bytes with what relaxed canonicalization
/// changes (runs of spaces, trailing blanks, empty lines at the end), lines starting
/// with a dot, and `Bye.` as its last line of text.
fn large_message(size: usize) -> Vec<u8> {
    let mut msg = message("large");
    msg.truncate(msg.len() - 4);
    let mut i = 0;
    while msg.len() < size {
        let dot = if i % 89 == 0 { "." } else { "" };
        msg.extend_from_slice(format!("{dot}line {i}  with   runs of\tspaces and a trailing blank \t\r\n").as_bytes());
        i += 1;
    }
    msg.extend_from_slice(b"Bye.\r\n\r\n\r\n");
    msg
}

/// `msg` signed with `key` (relaxed/relaxed, by Tern's signer).
fn signed(key: &Key, msg: &[u8]) -> Vec<u8> {
    let config = DkimKey {
        domain: key.domain.clone(),
        selector: key.selector.clone(),
        key: key.path.clone(),
        algorithm: DkimAlgorithm::RsaSha256,
    };
    let signer = Signer::load(&[config]).expect("load the key");
    let signature = signer.sign(b"", msg);
    assert!(signature.starts_with("DKIM-Signature: "), "{signature}");
    [signature.as_bytes(), msg].concat()
}

/// A 20 MiB signed message from a stranger passes DKIM (and DMARC through it), and
/// checking it raises the server's peak RSS by far less than its size: the header
/// block is parsed, the body only hashed as it arrives. The growth measured was about
/// 3 MiB, against about 40 MiB when the checks read the message back whole; the
/// bound leaves room for receiving (which the streaming tests bound by 8 MiB).
#[test]
fn a_large_signed_message_is_checked_in_bounded_memory() {
    let key = keygen(SIGNER, "s1", Alg::Rsa);
    let dns = DnsServer::start(&zone(&[&key], Some(DMARC_REJECT), &[]));
    let b = receiver(&dns, "");
    let msg = signed(&key, &large_message(20 * MIB));
    let pid = b.pid().unwrap();
    let before = reset_peak(pid);
    // Another domain's envelope sender: DMARC can pass only through the signature.
    let stored = deliver(&b, "bounce@other.test", BOB, &msg);
    let growth = proc_status(pid, "VmHWM").saturating_sub(before);
    eprintln!("peak RSS growth while receiving and checking 20 MiB: {} KiB", growth / 1024);
    assert_results(&stored, "pass", &[("pass", SIGNER, "s1")], "none", "pass");
    assert!(growth < 16 * MIB, "peak RSS grew by {} KiB checking 20 MiB", growth / 1024);
}

/// The same message changed at the end of its body, or at its start, fails DKIM.
#[test]
fn a_large_signed_message_changed_anywhere_in_its_body_fails() {
    let key = keygen(SIGNER, "s1", Alg::Rsa);
    let dns = DnsServer::start(&zone(&[&key], Some(DMARC_REJECT), &[]));
    let b = receiver(&dns, "");
    let msg = signed(&key, &large_message(20 * MIB));
    let at_end = replace_after(&msg, &msg[msg.len() - 20..], b"Bye.", b"Bye!");
    let stored = deliver(&b, ALICE, "carol@b.test", &at_end);
    assert_results(&stored, "pass", &[("fail", SIGNER, "s1")], "none", "pass");
    let at_start = tamper_body(&msg);
    let stored = deliver(&b, ALICE, "dave@b.test", &at_start);
    assert_results(&stored, "pass", &[("fail", SIGNER, "s1")], "none", "pass");
}
