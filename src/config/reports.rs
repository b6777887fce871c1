//! `[reports]`: the aggregate reports Tern sends to the domains that ask for them —
//! TLS-RPT (RFC 8460) about outbound TLS, and DMARC (RFC 7489 §7.2) about mail received.

use super::humantime_serde;
use serde::Deserialize;
use std::time::Duration;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Reports {
    /// Count outbound TLS sessions per recipient domain and send TLS-RPT reports.
    pub tls: bool,
    /// Aggregate DMARC results of received mail and send DMARC aggregate reports.
    pub dmarc: bool,
    /// The `From:` (and envelope sender) of reports; default `tls-reports@<hostname>`
    /// for TLS-RPT and `noreply-dmarc@<hostname>` for DMARC.
    pub from: Option<String>,
    /// `org_name` of DMARC reports and `organization-name` of TLS-RPT; default the
    /// host name.
    pub org_name: Option<String>,
    /// The UTC hour (0–23) in which the reports of the previous day go out, at a
    /// random minute of it.
    pub hour: u8,
    /// How often the aggregates are written to `<data_dir>/reports/` (in a cluster,
    /// added to the cluster's database).
    #[serde(with = "humantime_serde")]
    pub flush_interval: Duration,
}

impl Default for Reports {
    fn default() -> Self {
        Reports {
            tls: true,
            dmarc: false,
            from: None,
            org_name: None,
            hour: 0,
            flush_interval: Duration::from_secs(60),
        }
    }
}

impl Reports {
    pub fn validate(&self) -> Result<(), String> {
        if self.hour > 23 {
            return Err(format!("reports.hour: {} is not an hour of the day (0 to 23)", self.hour));
        }
        if let Some(from) = &self.from {
            let valid = from.rsplit_once('@').is_some_and(|(l, d)| !l.is_empty() && !d.is_empty());
            if !valid || from.contains(char::is_whitespace) {
                return Err(format!("reports.from: {from:?} is not a mail address"));
            }
        }
        if self.flush_interval.is_zero() {
            return Err("reports.flush_interval: must be more than 0s".into());
        }
        Ok(())
    }
}
