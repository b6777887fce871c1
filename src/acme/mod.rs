//! Certificates from an ACME server (RFC 8555) for every TLS listener: obtained in
//! the background at start, kept in `<data_dir>/acme/`, renewed before they expire,
//! and swapped in live. While none is there, listeners serve the `[tls]` certificate
//! (or the self-signed one).
//!
//! What the listeners need from here is process-wide ([`live`]): the certificate in
//! force, the tls-alpn-01 challenge certificates and the http-01 tokens being
//! validated, and the state `tern status` shows.

mod challenge;
mod http;
mod order;
mod renew;
pub mod stored;

pub use challenge::ACME_TLS_ALPN;
pub use renew::start;

use arc_swap::ArcSwapOption;
use rustls::sign::CertifiedKey;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

/// What the listeners share with the ACME task.
#[derive(Default)]
pub struct Live {
    cert: ArcSwapOption<CertifiedKey>,
    /// tls-alpn-01: the challenge certificate of each name being validated.
    alpn: Mutex<HashMap<String, Arc<CertifiedKey>>>,
    /// http-01: token → key authorization.
    tokens: Mutex<HashMap<String, String>>,
    state: Mutex<Option<AcmeStatus>>,
}

/// The process's ACME state.
pub fn live() -> &'static Live {
    static LIVE: LazyLock<Live> = LazyLock::new(Live::default);
    &LIVE
}

impl Live {
    /// The ACME certificate in force, if any.
    pub fn certificate(&self) -> Option<Arc<CertifiedKey>> {
        self.cert.load_full()
    }

    fn set_certificate(&self, cert: Arc<CertifiedKey>) {
        self.cert.store(Some(cert));
    }

    /// The tls-alpn-01 certificate for `name`, while its challenge is open.
    pub fn alpn_certificate(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        self.alpn.lock().unwrap_or_else(|e| e.into_inner()).get(&name).cloned()
    }

    /// The http-01 key authorization for `token`, while its challenge is open.
    pub fn http_token(&self, token: &str) -> Option<String> {
        self.tokens.lock().unwrap_or_else(|e| e.into_inner()).get(token).cloned()
    }

    fn open_alpn(&self, name: &str, cert: Arc<CertifiedKey>) {
        self.alpn.lock().unwrap_or_else(|e| e.into_inner()).insert(name.to_ascii_lowercase(), cert);
    }

    fn open_token(&self, token: &str, key_authorization: String) {
        self.tokens.lock().unwrap_or_else(|e| e.into_inner()).insert(token.to_string(), key_authorization);
    }

    /// Forgets every open challenge (an order is over).
    fn close_challenges(&self) {
        self.alpn.lock().unwrap_or_else(|e| e.into_inner()).clear();
        self.tokens.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// What `tern status` shows; `None` without `[acme]`.
    pub fn status(&self) -> Option<AcmeStatus> {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn update(&self, change: impl FnOnce(&mut AcmeStatus)) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        change(state.get_or_insert_with(AcmeStatus::default));
    }
}

/// The ACME side of `tern status` (times in Unix seconds).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AcmeStatus {
    pub directory: String,
    pub challenge: String,
    /// `issued`, `failed`, or none yet.
    pub last_result: Option<String>,
    pub last_attempt: Option<u64>,
    pub last_error: Option<String>,
    /// When the next order is due.
    pub next_renewal: Option<u64>,
}

/// One certificate a listener may serve, for `tern status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CertificateInfo {
    /// `acme`, `file` or `self-signed`.
    pub source: String,
    pub names: Vec<String>,
    /// Unix seconds.
    pub not_after: i64,
    /// Whether listeners serve it now.
    pub in_use: bool,
}
