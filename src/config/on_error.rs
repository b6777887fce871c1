//! `on_error` of the content filters (`[[milter]]`, `[rspamd]`): what a filter that
//! cannot give a verdict (dead, slow, garbled) means for the mail, as Postfix's
//! `milter_default_action`.

use serde::Deserialize;
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// Go on as if the filter were not configured (deliver unmarked).
    Accept,
    /// 451 4.7.1 at the stage where it failed: the client tries again later.
    Tempfail,
    /// 550 5.7.1 at the stage where it failed.
    Reject,
}

impl OnError {
    /// The default of `[rspamd]`: a spam filter that is down lets mail through.
    pub fn accept() -> OnError {
        OnError::Accept
    }

    /// The default of `[[milter]]`, as Postfix's.
    pub fn tempfail() -> OnError {
        OnError::Tempfail
    }
}

impl fmt::Display for OnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OnError::Accept => "accept",
            OnError::Tempfail => "tempfail",
            OnError::Reject => "reject",
        })
    }
}
