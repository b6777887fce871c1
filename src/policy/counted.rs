//! What counts over time (the greylist, message and recipient rates, failed logins),
//! kept either by this server alone or, with `[cluster]`, in the cluster's database
//! ([`crate::cluster::shared`]) so that all nodes count as one.

use super::greylist::{self, Verdict};
use super::limits;
use crate::cluster::shared;
use crate::smtp::address::Mailbox;
use std::net::IpAddr;

pub enum Greylist {
    Local(greylist::Greylist),
    Shared(shared::greylist::Greylist),
}

impl Greylist {
    /// The decision for a recipient of a transaction from `client` with reverse-path
    /// `from` (`None`: the null sender).
    pub async fn check(&self, client: IpAddr, from: Option<&Mailbox>, to: &Mailbox) -> Verdict {
        match self {
            Greylist::Local(list) => list.check(client, from, to),
            Greylist::Shared(list) => {
                let sender = from.map(Mailbox::to_string).unwrap_or_default();
                list.check(&greylist::triplet_key(client, &sender, &to.to_string())).await
            }
        }
    }
}

pub enum Rates {
    Local(limits::Rates),
    Shared(shared::rates::Rates),
}

impl Rates {
    /// Counts one more message for `key`; false when over the limit.
    pub async fn message(&self, key: &str) -> bool {
        match self {
            Rates::Local(rates) => rates.message(key),
            Rates::Shared(rates) => rates.message(key).await,
        }
    }

    /// Counts one more recipient for `key`; false when over the limit.
    pub async fn recipient(&self, key: &str) -> bool {
        match self {
            Rates::Local(rates) => rates.recipient(key),
            Rates::Shared(rates) => rates.recipient(key).await,
        }
    }
}

pub enum AuthFailures {
    Local(limits::AuthFailures),
    Shared(shared::rates::AuthFailures),
}

impl AuthFailures {
    /// Records a failure; returns how many this IP has in the window.
    pub async fn failed(&self, ip: IpAddr) -> u32 {
        match self {
            AuthFailures::Local(f) => f.failed(ip),
            AuthFailures::Shared(f) => f.failed(ip).await,
        }
    }

    pub async fn is_banned(&self, ip: IpAddr) -> bool {
        match self {
            AuthFailures::Local(f) => f.is_banned(ip),
            AuthFailures::Shared(f) => f.is_banned(ip).await,
        }
    }
}
