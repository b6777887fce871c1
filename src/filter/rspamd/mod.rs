//! The rspamd client: a received message is sent to rspamd's `/checkv2` with what
//! rspamd's protocol carries beside it in request headers (the client's address and
//! HELO, the envelope, the queue id, the authenticated user), and its JSON answer
//! read into an [`Answer`]. What Tern does with the answer is `server::spam`'s.

pub mod answer;
pub mod edit;
mod http;

pub use answer::{Action, Answer};
pub use http::{Content, MAX_ANSWER};

use crate::config::{Rspamd, RspamdEndpoint};
use std::net::IpAddr;
use std::time::Duration;

/// What rspamd is told about a message beside its content.
pub struct Envelope<'a> {
    pub client: IpAddr,
    pub helo: &'a str,
    /// The reverse-path, empty for the null sender.
    pub from: &'a str,
    /// The recipients as the client gave them.
    pub rcpts: Vec<String>,
    pub queue_id: &'a str,
    /// The authenticated user (SMTP AUTH, or the local user of `tern sendmail`).
    pub user: Option<&'a str>,
    /// The client's verified host name, when known.
    pub hostname: Option<&'a str>,
    /// Tern's own host name.
    pub mta_name: &'a str,
}

/// A configured rspamd.
pub struct Client {
    endpoint: RspamdEndpoint,
    timeout: Duration,
    settings_id: Option<String>,
}

impl Client {
    pub fn new(config: &Rspamd) -> Result<Client, String> {
        Ok(Client { endpoint: config.endpoint()?, timeout: config.timeout, settings_id: config.settings_id.clone() })
    }

    /// The request headers of rspamd's protocol for `envelope`.
    fn headers(&self, envelope: &Envelope<'_>) -> Vec<(&'static str, String)> {
        let mut headers = vec![
            ("IP", envelope.client.to_string()),
            ("Helo", envelope.helo.to_string()),
            // The null reverse-path as rspamd's milter passes it.
            ("From", if envelope.from.is_empty() { "<>".to_string() } else { envelope.from.to_string() }),
            ("Queue-Id", envelope.queue_id.to_string()),
            ("MTA-Name", envelope.mta_name.to_string()),
        ];
        headers.extend(envelope.rcpts.iter().map(|r| ("Rcpt", r.clone())));
        if let Some(user) = envelope.user {
            headers.push(("User", user.to_string()));
        }
        if let Some(hostname) = envelope.hostname {
            headers.push(("Hostname", hostname.to_string()));
        }
        if let Some(id) = &self.settings_id {
            headers.push(("Settings-ID", id.clone()));
        }
        headers
    }

    /// Asks rspamd about a message; an error (no connection, a timeout, an answer
    /// that is not a verdict) says what went wrong. Never takes longer than the
    /// configured `timeout`.
    pub async fn check(&self, envelope: &Envelope<'_>, content: Content) -> Result<Answer, String> {
        let headers = self.headers(envelope);
        let exchange = http::post(&self.endpoint, "/checkv2", &headers, content);
        let (status, body) = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| format!("no answer within {}", humantime::format_duration(self.timeout)))??;
        if status != 200 {
            let said = answer::parse(&body).err().filter(|e| e.starts_with("rspamd error")).unwrap_or_default();
            return Err(format!("HTTP status {status} {said}").trim_end().to_string());
        }
        answer::parse(&body)
    }
}
