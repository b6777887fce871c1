//! One ACME order (RFC 8555 §7.4): the account, the order for the configured names,
//! a challenge answered for each authorization, the CSR, and the certificate.

use super::{challenge, http, live, stored};
use crate::config::{Acme, Challenge};
use instant_acme::{
    Account, AuthorizationStatus, ChallengeType, Identifier, NewAccount, NewOrder, OrderStatus, RetryPolicy,
};
use rustls::crypto::CryptoProvider;
use std::path::Path;
use std::time::Duration;

/// How long the ACME server has to validate and to issue.
const VALIDATION: RetryPolicy =
    RetryPolicy::new().initial_delay(Duration::from_millis(250)).backoff(1.5).timeout(Duration::from_secs(90));

/// A new certificate: (chain PEM, key PEM).
pub async fn order(
    acme: &Acme,
    names: &[String],
    dir: &Path,
    provider: &CryptoProvider,
) -> Result<(String, String), String> {
    let account = account(acme, dir).await?;
    let identifiers: Vec<Identifier> = names.iter().map(|n| Identifier::Dns(n.clone())).collect();
    let mut order = account.new_order(&NewOrder::new(&identifiers)).await.map_err(|e| format!("new order: {e}"))?;
    let result = async {
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz.map_err(|e| format!("authorization: {e}"))?;
            match authz.status {
                AuthorizationStatus::Valid => continue,
                AuthorizationStatus::Pending => {}
                other => return Err(format!("authorization is {other:?}")),
            }
            let kind = match acme.challenge {
                Challenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
                Challenge::Http01 => ChallengeType::Http01,
            };
            let mut ch = authz
                .challenge(kind)
                .ok_or_else(|| format!("the ACME server offers no {} challenge", acme.challenge.name()))?;
            let name = ch.identifier().to_string();
            let key_authorization = ch.key_authorization();
            match acme.challenge {
                Challenge::TlsAlpn01 => {
                    let cert = challenge::alpn_certificate(provider, &name, key_authorization.digest().as_ref())?;
                    live().open_alpn(&name, std::sync::Arc::new(cert));
                }
                Challenge::Http01 => live().open_token(&ch.token, key_authorization.as_str().to_string()),
            }
            ch.set_ready().await.map_err(|e| format!("challenge for {name}: {e}"))?;
        }
        let status = order.poll_ready(&VALIDATION).await.map_err(|e| format!("validation: {e}"))?;
        if status != OrderStatus::Ready {
            return Err(format!("the order is {status:?} after validation"));
        }
        // The key in force is kept across renewals, so that TLSA records pinning it
        // (`3 1 1`, RFC 7671 §8.1) stay true; a new one only when there is none.
        let key = match std::fs::read_to_string(stored::key_file(dir))
            .ok()
            .and_then(|pem| rcgen::KeyPair::from_pem(&pem).ok())
        {
            Some(key) => key,
            None => rcgen::KeyPair::generate().map_err(|e| e.to_string())?,
        };
        let mut params = rcgen::CertificateParams::new(names.to_vec()).map_err(|e| e.to_string())?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        let csr = params.serialize_request(&key).map_err(|e| e.to_string())?;
        order.finalize_csr(csr.der()).await.map_err(|e| format!("finalize: {e}"))?;
        let chain = order.poll_certificate(&VALIDATION).await.map_err(|e| format!("certificate: {e}"))?;
        Ok((chain, key.serialize_pem()))
    }
    .await;
    live().close_challenges();
    result
}

/// The stored account, or a new one (kept in `dir`).
async fn account(acme: &Acme, dir: &Path) -> Result<Account, String> {
    let client = || http::Client::new(acme.ca_file.as_deref()).map(|c| Account::builder_with_http(Box::new(c)));
    if let Some(credentials) = stored::load_account(dir, &acme.directory)? {
        return client()?.from_credentials(credentials).await.map_err(|e| format!("account: {e}"));
    }
    let contact: Vec<&str> = acme.contact.iter().map(String::as_str).collect();
    let new = NewAccount { contact: &contact, terms_of_service_agreed: true, only_return_existing: false };
    let (account, credentials) =
        client()?.create(&new, acme.directory.clone(), None).await.map_err(|e| format!("new account: {e}"))?;
    stored::save_account(dir, &acme.directory, credentials)?;
    tracing::info!(directory = %acme.directory, id = account.id(), "ACME: account created");
    Ok(account)
}
