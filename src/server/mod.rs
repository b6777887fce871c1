//! Listeners, connections and the life of the `serve` process.

mod budget;
mod checks;
mod connection;
mod context;
pub mod control;
mod listen;
mod listeners;
pub mod local_submit;
pub mod lock;
mod milter_intake;
mod notify;
pub mod privileges;
mod received;
mod reload;
pub(crate) mod routing;
mod spam;
mod spill;
pub mod tls;
mod web;

pub use reload::{Error as ReloadError, Live, Summary, reload};

use crate::admin;
use crate::config::{Config, ListenMode};
use crate::delivery::maildir::MailRoot;
use crate::delivery::remote::{Hop, Pool, RemoteConfig, TlsClient};
use crate::dns::Dns;
use crate::policy::LocalPolicy;
use crate::policy::auth::Checker;
use crate::policy::counted::{AuthFailures, Greylist, Rates};
use crate::policy::dkim::Signer;
use crate::policy::limits::Connections;
use crate::policy::users::Users;
use crate::queue::{Queue, QueueConfig, Shared};
use crate::smtp::session::SessionConfig;
use crate::spool::{self, Spool};
use arc_swap::ArcSwap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, watch};

/// What every connection shares: one configuration and what was built from it. A
/// session keeps the context it started with; a reload makes a new one.
pub struct Context {
    pub config: Config,
    pub policy: Arc<LocalPolicy>,
    /// Where accepted messages go: the local spool, or the cluster's database.
    pub store: Arc<dyn spool::Store>,
    pub queue: Queue,
    pub users: Arc<Users>,
    pub tls: Option<Arc<tls::ServerTls>>,
    pub connections: Arc<Connections>,
    pub rates: Arc<Rates>,
    pub auth_failures: Arc<AuthFailures>,
    /// Tern's resolver, for the DNS block and allow lists.
    pub dns: Dns,
    /// Present when `[antispam.greylisting] enabled`.
    pub greylist: Option<Arc<Greylist>>,
    /// SPF, DKIM, ARC and DMARC checks; present when `[auth_checks] enabled`.
    pub auth: Option<Checker>,
    /// DKIM keys for mail from users and relay networks.
    pub signer: Signer,
    /// Message bytes held in memory by all sessions (`[limits] max_inflight_bytes`).
    pub budget: Arc<budget::Budget>,
    /// Where message content goes as it arrives.
    pub spill_files: Arc<spill::Files>,
}

impl Context {
    /// Clients in `[relay] networks`: may relay, exempt from per-client limits.
    pub fn trusted(&self, ip: IpAddr) -> bool {
        self.config.relay.networks.iter().any(|n| n.contains(&ip))
    }

    /// Mail from strangers on port 25 is checked for SPF, DKIM, ARC and DMARC.
    pub fn checks_mail_from(&self, mode: ListenMode, ip: IpAddr, user: Option<&str>) -> Option<&Checker> {
        self.auth.as_ref().filter(|_| mode == ListenMode::Smtp && user.is_none() && !self.trusted(ip))
    }

    /// The session settings for a listener of `mode` and a client at `ip`.
    pub fn session_config(&self, mode: ListenMode, ip: IpAddr) -> SessionConfig {
        let c = &self.config;
        let tls = self.tls.is_some();
        SessionConfig {
            hostname: c.hostname.clone(),
            max_message_size: c.limits.max_message_size,
            max_recipients: c.limits.max_recipients,
            max_bad_commands: c.limits.max_bad_commands,
            max_header_size: c.limits.max_header_size,
            starttls: tls && mode != ListenMode::Submissions,
            auth: tls || c.auth.allow_plaintext_loopback,
            auth_without_tls: c.auth.allow_plaintext_loopback && ip.is_loopback(),
            require_auth: mode != ListenMode::Smtp,
        }
    }
}

/// Creates the data directory if needed and takes its lock, before anything in it is
/// touched; the lock must then be held until the process ends.
pub fn own_data_dir(config: &Config) -> Result<lock::DataDirLock, String> {
    crate::files::create_data_dir(config)
        .map_err(|e| format!("cannot create data directory {}: {e}", config.data_dir.display()))?;
    lock::acquire(&config.data_dir)
}

/// What `serve` needs from before privileges are dropped: the bound listeners, the
/// certificate and the DKIM keys.
pub struct Prepared {
    listeners: Vec<listeners::Bound>,
    keys: context::Keys,
}

/// Binds the listeners and reads the keys (the part of starting that may need root).
pub fn prepare(config: &Config) -> Result<Prepared, String> {
    let keys = context::Keys::load(config).map_err(|(key, e)| format!("{key}: {e}"))?;
    let listeners = listeners::bind_all(&config.listen)?;
    Ok(Prepared { listeners, keys })
}

/// Runs the server until SIGTERM or SIGINT, then stops gracefully; SIGHUP reloads the
/// configuration from `origin` (the file it came from; `None` for the embedded
/// default). The caller holds the data directory's lock ([`own_data_dir`]) and has
/// bound the listeners ([`prepare`]).
pub async fn serve(config: Config, origin: Option<PathBuf>, prepared: Prepared) -> Result<(), String> {
    let spool_dir = config.spool_dir();
    let (store, pending, cluster) = match &config.cluster {
        None => {
            let options = spool::Options { segment_size: config.spool.segment_size };
            let open = |e: std::io::Error| format!("cannot open spool {}: {e}", spool_dir.display());
            let spool = Spool::open(&spool_dir, options).map_err(open)?;
            let pending = spool.load().await.map_err(open)?;
            (Arc::new(spool) as Arc<dyn spool::Store>, pending, None)
        }
        Some(settings) => {
            let cluster = crate::cluster::join(settings, &config).await?;
            let store = crate::cluster::store::PgStore::start(cluster.clone());
            (Arc::new(store) as Arc<dyn spool::Store>, Vec::new(), Some(cluster))
        }
    };
    let spill_dir = config.spill_dir();
    spill::prepare_dir(&spill_dir).map_err(|e| format!("cannot prepare {}: {e}", spill_dir.display()))?;
    let recovered = pending.len();
    // Signals are caught from the start, so that an early SIGTERM or SIGHUP never
    // kills the process the default way.
    let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    let mut hup = signal(SignalKind::hangup()).map_err(|e| e.to_string())?;
    let own_addrs: Vec<SocketAddr> = prepared.listeners.iter().filter_map(|b| b.socket.local_addr().ok()).collect();
    if let Some(cluster) = &cluster {
        // The same pool as the queue's.
        crate::cluster::shared::start(cluster.clone(), config.admin.trace_retention)
            .await
            .map_err(|e| format!("cluster: {e}"))?;
        tracing::info!("greylisting, rates, bans, users, trace and MTA-STS policies shared in the cluster's database");
    }
    let first = context::first_settings(&config, own_addrs.clone())?;
    admin::trace::start(&config.data_dir, config.admin.trace_retention)
        .map_err(|e| format!("cannot open the message trace in {}: {e}", config.data_dir.display()))?;
    admin::activity::get().start();
    let (queue, queue_task) = Queue::start(Shared::new(store.clone(), first.config, first.dns, first.router), pending);
    let lasting = context::Lasting {
        store,
        queue: queue.clone(),
        connections: Arc::new(Connections::default()),
        spill_files: spill::Files::new(spill_dir),
    };
    let (ctx, settings) = context::build(config, prepared.keys, &lasting, None, own_addrs)?;
    queue.reconfigure(settings);
    crate::reports::configure(&ctx.config.reports);
    crate::reports::load(&ctx.config.data_dir);
    let data_dir = ctx.config.data_dir.clone();
    let current = Arc::new(ArcSwap::from_pointee(ctx));

    let (stop_tx, stop_rx) = watch::channel(false);
    // Every connection holds a clone of `alive`; when all are gone, `all_gone` returns.
    let (alive, mut all_gone) = mpsc::channel::<()>(1);
    let listeners = listeners::Listeners::new(current.clone(), stop_rx.clone(), alive.clone());
    let live = reload::Live::new(origin, current, lasting.clone(), listeners);
    let ops = Arc::new(admin::ops::State {
        queue: queue.clone(),
        store: lasting.store.clone(),
        started: (std::time::Instant::now(), std::time::SystemTime::now()),
        live: live.clone(),
        admin: Default::default(),
        data_dir: data_dir.clone(),
        spool_dir,
        ready: Default::default(),
    });
    // The sockets in the data directory are there before the first greeting.
    let control = control::start(&data_dir, ops.clone())
        .map_err(|e| format!("cannot open control socket in {}: {e}", data_dir.display()))?;
    let ctx = live.context();
    let submit_path = ctx.config.submit_socket();
    let submit = local_submit::bind(&submit_path, &data_dir)
        .map_err(|e| format!("cannot open the local submission socket {}: {e}", submit_path.display()))?;
    let admin = admin::start(&ctx.config, ops.clone()).await?;
    tokio::spawn(local_submit::serve(live.current(), submit, stop_rx, alive));
    let reports = tokio::spawn(crate::reports::run(live.current()));
    // Said before the first greeting, so that whoever is greeted can read it.
    let addrs = listeners::describe(&prepared.listeners);
    let admin_addr = admin.as_ref().map(|(addr, _)| *addr);
    let admin_text = admin_addr.map_or("admin API off".to_string(), |a| format!("admin API on http://{a}"));
    println!(
        "tern: listening on {addrs}; mail for {} goes to {}; {recovered} queued message(s) recovered; {admin_text}",
        ctx.config.local.domains.join(", "),
        ctx.config.mail_root().display()
    );
    tracing::info!(listen = %addrs, admin = ?admin_addr, recovered, "started");
    live.start_listeners(prepared.listeners).await?;
    crate::acme::start(&ctx.config);
    ops.ready.store(true, std::sync::atomic::Ordering::Relaxed);
    notify::ready(&format!("listening on {addrs}"));
    drop(ctx);

    loop {
        tokio::select! {
            _ = term.recv() => break tracing::info!("SIGTERM: stopping"),
            _ = int.recv() => break tracing::info!("SIGINT: stopping"),
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading the configuration");
                let _ = reload(&live).await;
            }
        }
    }
    notify::stopping();
    ops.ready.store(false, std::sync::atomic::Ordering::Relaxed);
    let grace = live.context().config.limits.shutdown_grace;
    let _ = stop_tx.send(true);
    live.close_listeners().await;
    if tokio::time::timeout(grace, all_gone.recv()).await.is_err() {
        tracing::warn!("sessions still open after the grace period; closing them");
    }
    queue.stop();
    if tokio::time::timeout(grace, queue_task).await.is_err() {
        tracing::warn!("deliveries still running after the grace period; they will be retried at next start");
    }
    if let Some(cluster) = &cluster {
        crate::cluster::store::leave(cluster).await;
    }
    control.abort();
    if let Some((_, task)) = admin {
        task.abort();
    }
    let _ = std::fs::remove_file(data_dir.join(control::SOCKET_NAME));
    let _ = std::fs::remove_file(&submit_path);
    reports.abort();
    crate::reports::flush().await;
    crate::cluster::shared::trace::flush().await;
    crate::admin::trace::flush();
    tracing::info!("stopped");
    Ok(())
}

fn queue_config(config: &Config, own_addrs: Vec<SocketAddr>) -> Result<QueueConfig, String> {
    let out = &config.outbound;
    let hop = |text: &String| Hop::parse(text).expect("validated with the configuration");
    let remote = RemoteConfig {
        hostname: config.hostname.clone(),
        port: out.port,
        allow_loopback: out.allow_loopback_mx,
        connect_timeout: out.connect_timeout,
        greeting_timeout: out.greeting_timeout,
        command_timeout: out.command_timeout,
        data_timeout: out.data_timeout,
        smarthost: config.relay.smarthost.as_ref().map(hop),
        routes: config
            .relay
            .routes
            .iter()
            .filter_map(|(domain, h)| Some((crate::smtp::address::canonical_domain(domain)?, hop(h))))
            .collect(),
        auth: config.relay.username.clone().zip(config.relay.password.clone()),
        smarthost_tls: config.relay.tls,
        starttls: out.starttls,
        tls: Arc::new(TlsClient::new(out.ca_file.as_deref())?),
        pool: Arc::new(Pool::new(out.max_connections_per_host)),
        own_addrs,
        mta_sts: out.mta_sts.then(|| Arc::new(crate::tls_policy::MtaSts::new(&config.data_dir))),
        dane: crate::dnssec::SecureDns::new(&config.dns)?,
    };
    Ok(QueueConfig {
        retry: config.queue.retry.clone(),
        max_age: config.queue.max_age,
        delay_notice: config.queue.delay_notice,
        concurrency: config.queue.concurrency,
        mail_root: MailRoot { path: config.mail_root(), access: config.mailbox_access()? },
        hostname: config.hostname.clone(),
        remote,
        local: config.local.clone(),
    })
}
