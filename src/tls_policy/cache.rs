//! The MTA-STS policy cache (RFC 8461 §5.1): one JSON file per domain in
//! `<data_dir>/mta-sts/`, holding the policy text as fetched, its id, and when it was
//! fetched and expires. What to do with a cached policy is decided by [`decide`].

use super::mta_sts::{self, Policy};
use crate::files::{self, Access};
use serde::{Deserialize, Serialize};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// A policy as stored: the text is kept, and parsed again on load.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The `id` of the TXT record the policy was fetched for.
    pub id: String,
    /// The policy file body.
    pub policy: String,
    /// Unix seconds.
    pub fetched_at: u64,
    /// Unix seconds: `fetched_at + max_age`.
    pub expires: u64,
}

impl Entry {
    /// A fresh entry for a policy just fetched, or why `text` is not a valid policy.
    pub fn new(id: &str, text: &str, now: u64) -> Result<(Entry, Policy), mta_sts::ParseError> {
        let policy = mta_sts::parse_policy(text)?;
        let entry = Entry {
            id: id.to_string(),
            policy: text.to_string(),
            fetched_at: now,
            expires: now + u64::from(policy.max_age),
        };
        Ok((entry, policy))
    }

    /// The parsed policy; `None` if the stored text is (no longer) valid.
    pub fn parsed(&self) -> Option<Policy> {
        mta_sts::parse_policy(&self.policy).ok()
    }
}

/// What the TXT lookup of `_mta-sts.<domain>` gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Txt<'a> {
    /// Exactly one valid record, with this id.
    Id(&'a str),
    /// No (valid) record.
    Absent,
    /// The lookup failed (timeout, SERVFAIL).
    Failed,
}

/// What to do for a domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Use the cached policy as it is.
    UseCached,
    /// Fetch the policy; if that fails, fall back to the unexpired cached one if any.
    Fetch,
    /// The domain has no policy.
    NoPolicy,
}

/// RFC 8461 §5.1: an unexpired cached policy is used while the TXT id is unchanged, and
/// also when the TXT lookup fails or the record is gone (§5: a policy holds until it
/// expires, so that an attacker who blocks DNS cannot strip it); a new id, or an
/// expired policy, means a refetch.
pub fn decide(cached: Option<&Entry>, txt: Txt<'_>, now: u64) -> Decision {
    let live = cached.filter(|e| e.expires > now);
    match (live, txt) {
        (Some(e), Txt::Id(id)) if e.id == id => Decision::UseCached,
        (_, Txt::Id(_)) => Decision::Fetch,
        (Some(_), Txt::Absent | Txt::Failed) => Decision::UseCached,
        (None, Txt::Absent | Txt::Failed) => Decision::NoPolicy,
    }
}

/// A cached policy is fetched again after this long, ahead of its expiry.
pub const REFRESH_EVERY: u64 = 24 * 3600;

/// RFC 8461 §5.1 ("senders SHOULD proactively refresh"): an unexpired policy is
/// refreshed once a day, and as soon as half its lifetime is gone.
pub fn needs_refresh(entry: &Entry, now: u64) -> bool {
    let age = now.saturating_sub(entry.fetched_at);
    let lifetime = entry.expires.saturating_sub(entry.fetched_at);
    entry.expires > now && (age >= REFRESH_EVERY || age.saturating_mul(2) >= lifetime)
}

/// The cache directory under the data dir.
pub fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join("mta-sts")
}

fn path(dir: &Path, domain: &str) -> Option<PathBuf> {
    // The domain becomes a file name: only a plain DNS name may.
    let plain = !domain.is_empty()
        && !domain.starts_with('.')
        && domain.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    plain.then(|| dir.join(format!("{}.json", domain.to_ascii_lowercase())))
}

/// The stored entry for `domain`, if there is a readable one.
pub fn load(dir: &Path, domain: &str) -> Option<Entry> {
    let text = std::fs::read(path(dir, domain)?).ok()?;
    serde_json::from_slice(&text).ok()
}

/// Stores `entry` for `domain` (owner-only, like all of the data dir): written to a
/// temporary file, synced, then renamed into place, so a crash leaves the old entry or
/// the new one.
pub fn store(dir: &Path, domain: &str, entry: &Entry) -> io::Result<()> {
    let target = path(dir, domain).ok_or_else(|| io::Error::other(format!("bad domain {domain}")))?;
    files::create_dir_all(dir, Access::PRIVATE)?;
    let tmp = dir.join(format!(".{}.json.tmp", domain.to_ascii_lowercase()));
    let mut file = files::create_file(&tmp, Access::PRIVATE, false)?;
    file.write_all(&serde_json::to_vec(entry).map_err(io::Error::other)?)?;
    file.sync_all()?;
    std::fs::rename(&tmp, &target)
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = "version: STSv1\nmode: enforce\nmx: mx.remote.test\nmax_age: 3600\n";

    #[test]
    fn decisions_follow_rfc_8461_5_1() {
        let (entry, _) = Entry::new("id1", POLICY, 1000).unwrap();
        assert_eq!(entry.expires, 4600);
        let e = Some(&entry);
        assert_eq!(decide(e, Txt::Id("id1"), 2000), Decision::UseCached);
        assert_eq!(decide(e, Txt::Id("id2"), 2000), Decision::Fetch);
        assert_eq!(decide(e, Txt::Failed, 2000), Decision::UseCached);
        assert_eq!(decide(e, Txt::Absent, 2000), Decision::UseCached);
        // Expired: the id alone no longer vouches for it.
        assert_eq!(decide(e, Txt::Id("id1"), 4600), Decision::Fetch);
        assert_eq!(decide(e, Txt::Failed, 4600), Decision::NoPolicy);
        assert_eq!(decide(None, Txt::Id("id1"), 0), Decision::Fetch);
        assert_eq!(decide(None, Txt::Absent, 0), Decision::NoPolicy);
    }

    #[test]
    fn invalid_policy_makes_no_entry() {
        assert!(Entry::new("id1", "version: STSv2\n", 0).is_err());
    }

    #[test]
    fn store_and_load_round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = dir(tmp.path());
        assert_eq!(load(&dir, "remote.test"), None);
        let (entry, policy) = Entry::new("id1", POLICY, 1000).unwrap();
        store(&dir, "Remote.Test", &entry).unwrap();
        let loaded = load(&dir, "remote.test").unwrap();
        assert_eq!(loaded, entry);
        assert_eq!(loaded.parsed().unwrap(), policy);
        let meta = std::fs::metadata(tmp.path().join("mta-sts/remote.test.json")).unwrap();
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777, 0o600);
        let (newer, _) = Entry::new("id2", POLICY, 2000).unwrap();
        store(&dir, "remote.test", &newer).unwrap();
        assert_eq!(load(&dir, "remote.test").unwrap().id, "id2");
        assert!(store(&dir, "../evil", &entry).is_err());
        assert_eq!(load(&dir, "../evil"), None);
    }

    #[test]
    fn policies_are_refreshed_ahead_of_expiry() {
        let (entry, _) = Entry::new("id1", POLICY, 1000).unwrap();
        let lifetime = entry.expires - entry.fetched_at;
        assert!(!needs_refresh(&entry, 1000));
        assert!(!needs_refresh(&entry, 1000 + lifetime.min(REFRESH_EVERY) / 2 - 1));
        assert!(needs_refresh(&entry, 1000 + lifetime.min(REFRESH_EVERY * 2) / 2));
        assert!(!needs_refresh(&entry, entry.expires), "an expired policy is fetched, not refreshed");
    }
}
