//! `[antispam]`: DNS block and allow lists, greylisting.

use super::humantime_serde;
use serde::Deserialize;
use std::time::Duration;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Antispam {
    /// DNS block lists (zones) asked about each `smtp` client at connect; a listed
    /// client is refused with 554 5.7.1 naming the list.
    pub dnsbl: Vec<String>,
    /// DNS allow lists: a listed client skips the block lists and greylisting.
    pub dnswl: Vec<String>,
    pub greylisting: Greylisting,
}

/// Greylisting (off by default): the first delivery attempt of an unknown
/// (client /24, sender, recipient) triplet is answered 451 4.7.1; a retry after
/// `delay` passes, and the triplet is then remembered for `expire`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Greylisting {
    pub enabled: bool,
    #[serde(with = "humantime_serde")]
    pub delay: Duration,
    /// A triplet not retried within this long is forgotten.
    #[serde(with = "humantime_serde")]
    pub retry_window: Duration,
    /// A passed triplet is remembered this long after it was last seen.
    #[serde(with = "humantime_serde")]
    pub expire: Duration,
}

impl Default for Greylisting {
    fn default() -> Self {
        Greylisting {
            enabled: false,
            delay: Duration::from_secs(300),
            retry_window: Duration::from_secs(2 * 24 * 3600),
            expire: Duration::from_secs(35 * 24 * 3600),
        }
    }
}
