//! Building the [`Context`] sessions share from a configuration, at start and at each
//! reload. What counts over time (rates, failed logins, the greylist, the in-flight
//! budget) is carried over from the previous context while its settings stay the same.

use super::tls::ServerTls;
use super::{Context, budget, routing, spill};
use crate::cluster::shared;
use crate::config::Config;
use crate::dns::Dns;
use crate::policy::LocalPolicy;
use crate::policy::auth::Checker;
use crate::policy::counted::{AuthFailures, Greylist, Rates};
use crate::policy::dkim::Signer;
use crate::policy::limits::{self as local, Connections};
use crate::policy::users::Users;
use crate::queue::{Queue, Settings};
use crate::spool::Store;
use std::fmt::Debug;
use std::net::SocketAddr;
use std::sync::Arc;

/// What lives as long as the server, whatever its configuration.
#[derive(Clone)]
pub struct Lasting {
    /// The local spool, or the cluster's database.
    pub store: Arc<dyn Store>,
    pub queue: Queue,
    pub connections: Arc<Connections>,
    pub spill_files: Arc<spill::Files>,
}

/// What a configuration names in files of its own: the server certificate and the
/// DKIM keys. Read before privileges are dropped at start, and again at each reload.
pub struct Keys {
    pub tls: Arc<ServerTls>,
    pub signer: Signer,
}

impl Keys {
    /// Reads the keys; an error comes with the key of the configuration that names
    /// the file (`dkim` or `tls.cert`).
    pub fn load(config: &Config) -> Result<Keys, (&'static str, String)> {
        let signer = Signer::load(&config.dkim).map_err(|e| ("dkim", e))?;
        let tls = Arc::new(ServerTls::new(config).map_err(|e| ("tls.cert", e))?);
        Ok(Keys { tls, signer })
    }
}

/// Settings equal in `a` and `b`, compared by their debug form (the configuration
/// types have no `PartialEq`).
fn same<T: Debug>(a: &T, b: &T) -> bool {
    format!("{a:?}") == format!("{b:?}")
}

/// The queue's settings for `config` alone, to start the queue with before the first
/// context exists ([`build`] then gives the ones it keeps).
pub fn first_settings(config: &Config, own_addrs: Vec<SocketAddr>) -> Result<Settings, String> {
    let dns = Dns::new(&config.dns)?;
    let policy = Arc::new(LocalPolicy::new(config, Arc::new(Users::for_config(config))));
    let router = Box::new(routing::PolicyRouter(policy));
    Ok(Settings { config: super::queue_config(config, own_addrs)?, dns, router })
}

/// The context for `config`, and the queue's settings to go with it.
pub fn build(
    config: Config,
    keys: Keys,
    lasting: &Lasting,
    previous: Option<&Context>,
    own_addrs: Vec<SocketAddr>,
) -> Result<(Context, Settings), String> {
    let dns = Dns::new(&config.dns)?;
    let users = Arc::new(Users::for_config(&config));
    let policy = Arc::new(LocalPolicy::new(&config, users.clone()));
    let queue = Settings {
        config: super::queue_config(&config, own_addrs)?,
        dns: dns.clone(),
        router: Box::new(routing::PolicyRouter(policy.clone())),
    };
    let (limits, auth) = (&config.limits, &config.auth);
    let kept = |key: fn(&Config) -> String| previous.filter(|p| key(&p.config) == key(&config));
    let rates = match kept(|c| {
        let l = &c.limits;
        format!("{:?}", (l.rate_window, l.max_messages_per_window, l.max_recipients_per_window))
    }) {
        Some(p) => p.rates.clone(),
        None => Arc::new(match shared::get() {
            Some(s) => Rates::Shared(shared::rates::Rates::new(
                &s.cluster,
                limits.rate_window,
                limits.max_messages_per_window,
                limits.max_recipients_per_window,
            )),
            None => Rates::Local(local::Rates::new(
                limits.rate_window,
                limits.max_messages_per_window,
                limits.max_recipients_per_window,
            )),
        }),
    };
    let auth_failures = match kept(|c| format!("{:?}", (c.auth.max_failures, c.auth.failure_window, c.auth.ban_time))) {
        Some(p) => p.auth_failures.clone(),
        None => Arc::new(match shared::get() {
            Some(s) => AuthFailures::Shared(shared::rates::AuthFailures::new(
                &s.cluster,
                auth.max_failures,
                auth.failure_window,
                auth.ban_time,
            )),
            None => {
                AuthFailures::Local(local::AuthFailures::new(auth.max_failures, auth.failure_window, auth.ban_time))
            }
        }),
    };
    let budget = match kept(|c| c.limits.max_inflight_bytes.to_string()) {
        Some(p) => p.budget.clone(),
        None => budget::Budget::new(limits.max_inflight_bytes),
    };
    let grey = &config.antispam.greylisting;
    let greylist = match previous.filter(|p| same(&p.config.antispam.greylisting, grey)) {
        Some(p) => p.greylist.clone(),
        None => grey.enabled.then(|| {
            Arc::new(match shared::get() {
                Some(s) => Greylist::Shared(shared::greylist::Greylist::new(&s.cluster, grey)),
                None => {
                    Greylist::Local(crate::policy::greylist::Greylist::open(config.data_dir.join("greylist"), grey))
                }
            })
        }),
    };
    let checker = config.auth_checks.enabled.then(|| Checker::new(&config.hostname, &config.auth_checks, &dns));
    let context = Context {
        policy,
        store: lasting.store.clone(),
        queue: lasting.queue.clone(),
        users,
        tls: Some(keys.tls),
        connections: lasting.connections.clone(),
        rates,
        auth_failures,
        dns,
        greylist,
        auth: checker,
        signer: keys.signer,
        budget,
        spill_files: lasting.spill_files.clone(),
        config,
    };
    Ok((context, queue))
}
