//! `[auth_checks]` (SPF, DKIM, ARC and DMARC on received mail) and `[[dkim]]` (signing
//! keys for sent mail).

use super::humantime_serde;
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

/// Checks of mail arriving on `smtp` listeners from clients that neither authenticated
/// nor sit in `[relay] networks`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthChecks {
    /// Run the checks and add an `Authentication-Results` header.
    pub enabled: bool,
    /// Apply the sender domain's DMARC policy: `p=reject` failures are refused with
    /// 550 5.7.1, `p=quarantine` failures go to the recipient's Junk folder.
    pub enforce_dmarc: bool,
    /// SPF `fail` for a domain without a DMARC policy: `"reject"` (550 5.7.23) or
    /// `"accept"` (delivered with the verdict in the header).
    pub spf_fail: FailAction,
    /// DNS trouble that leaves a verdict open: `"defer"` (451, the sender retries) or
    /// `"accept"`. A temporary error never causes a permanent refusal.
    pub temp_error: TempErrorAction,
    /// Also add a `Received-SPF` header (RFC 7208 §9.1).
    pub received_spf: bool,
    /// Forwarders (mailing lists, say) whose ARC seal is trusted: a DMARC failure of
    /// mail whose ARC chain passes and was last sealed by one of these domains is
    /// delivered as if it had passed (RFC 8617 §7.2.1).
    pub trusted_arc_sealers: Vec<String>,
    /// Time allowed for the SPF check (which starts at MAIL and runs while the message
    /// arrives), and again for the DKIM, ARC and DMARC checks at the end of the message.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for AuthChecks {
    fn default() -> Self {
        AuthChecks {
            enabled: true,
            enforce_dmarc: true,
            spf_fail: FailAction::Reject,
            temp_error: TempErrorAction::Defer,
            received_spf: true,
            trusted_arc_sealers: Vec::new(),
            timeout: Duration::from_secs(20),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailAction {
    Reject,
    Accept,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TempErrorAction {
    Defer,
    Accept,
}

/// One DKIM signing key: mail whose `From:` domain is `domain` is signed with it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DkimKey {
    pub domain: String,
    pub selector: String,
    /// PEM private key (PKCS#8, or PKCS#1 for RSA), as `tern dkim keygen` writes it.
    pub key: PathBuf,
    #[serde(default)]
    pub algorithm: DkimAlgorithm,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum DkimAlgorithm {
    #[default]
    #[serde(rename = "rsa-sha256")]
    RsaSha256,
    #[serde(rename = "ed25519-sha256")]
    Ed25519Sha256,
}
