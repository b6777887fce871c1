//! Listeners, connections and the life of the `serve` process.

mod budget;
mod checks;
mod connection;
pub mod control;
mod listen;
pub mod local_submit;
pub mod lock;
mod received;
mod routing;
mod spill;
pub mod tls;

use crate::admin;
use crate::config::{Config, ListenMode};
use crate::delivery::maildir::MailRoot;
use crate::delivery::remote::{Hop, Pool, RemoteConfig, TlsClient};
use crate::dns::Dns;
use crate::log_limit::{self, LogLimit};
use crate::policy::LocalPolicy;
use crate::policy::auth::Checker;
use crate::policy::dkim::Signer;
use crate::policy::greylist::Greylist;
use crate::policy::limits::{AuthFailures, Connections, Rates};
use crate::policy::users::Users;
use crate::queue::{Queue, QueueConfig, Shared};
use crate::smtp::session::SessionConfig;
use crate::spool::{self, Spool};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, watch};

/// What every connection shares.
pub struct Context {
    pub config: Config,
    pub policy: Arc<LocalPolicy>,
    pub spool: Spool,
    pub queue: Queue,
    pub users: Arc<Users>,
    pub tls: Option<Arc<tls::ServerTls>>,
    pub connections: Arc<Connections>,
    pub rates: Rates,
    pub auth_failures: AuthFailures,
    /// Tern's resolver, for the DNS block and allow lists.
    pub dns: Dns,
    /// Present when `[antispam.greylisting] enabled`.
    pub greylist: Option<Greylist>,
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

/// Runs the server until SIGTERM or SIGINT, then stops gracefully. The caller holds the
/// data directory's lock ([`own_data_dir`]).
pub async fn serve(config: Config) -> Result<(), String> {
    let spool_dir = config.spool_dir();
    let options = spool::Options { segment_size: config.spool.segment_size };
    let open = |e: std::io::Error| format!("cannot open spool {}: {e}", spool_dir.display());
    let spool = Spool::open(&spool_dir, options).map_err(open)?;
    let pending = spool.load().await.map_err(open)?;
    let spill_dir = config.spill_dir();
    spill::prepare_dir(&spill_dir).map_err(|e| format!("cannot prepare {}: {e}", spill_dir.display()))?;
    let recovered = pending.len();
    // Signals are caught from the start, so that an early SIGTERM or SIGHUP never
    // kills the process the default way.
    let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    let mut hup = signal(SignalKind::hangup()).map_err(|e| e.to_string())?;
    let signer = Signer::load(&config.dkim)?;
    let mut listeners = Vec::new();
    let configured: Vec<SocketAddr> = config.listen.iter().map(|l| l.addr).collect();
    for l in &config.listen {
        let v6only = listen::needs_v6only(l.addr, &configured);
        let listener = listen::listen(l.addr, v6only).map_err(|e| format!("cannot listen on {}: {e}", l.addr))?;
        listeners.push((listener, l.mode));
    }
    let dns = Dns::new(&config.dns)?;
    let users = Arc::new(Users::open(config.users_file()));
    let policy = Arc::new(LocalPolicy::new(&config, users.clone()));
    let tls = Some(Arc::new(tls::ServerTls::new(&config)?));
    let own_addrs = listeners.iter().filter_map(|(l, _)| l.local_addr().ok()).collect();
    let shared = Shared::new(
        Arc::new(spool.clone()),
        queue_config(&config, own_addrs)?,
        dns.clone(),
        Box::new(routing::PolicyRouter(policy.clone())),
    );
    admin::trace::start(&config.data_dir, config.admin.trace_retention)
        .map_err(|e| format!("cannot open the message trace in {}: {e}", config.data_dir.display()))?;
    admin::activity::get().start();
    let (queue, queue_task) = Queue::start(shared, pending);
    let ops = Arc::new(admin::ops::State {
        queue: queue.clone(),
        store: Arc::new(spool.clone()),
        started: (std::time::Instant::now(), std::time::SystemTime::now()),
        listeners: listeners.iter().filter_map(|(l, mode)| Some((l.local_addr().ok()?, *mode))).collect(),
        admin: Default::default(),
        config_source: config.source.clone(),
        data_dir: config.data_dir.clone(),
        spool_dir: spool_dir.clone(),
        ready: Default::default(),
    });
    let control = control::start(&config.data_dir, ops.clone())
        .map_err(|e| format!("cannot open control socket in {}: {e}", config.data_dir.display()))?;
    let submit_path = config.submit_socket();
    let submit = local_submit::bind(&submit_path, &config.data_dir)
        .map_err(|e| format!("cannot open the local submission socket {}: {e}", submit_path.display()))?;
    let admin = admin::start(&config, ops.clone()).await?;
    let grace = config.limits.shutdown_grace;
    let limits = &config.limits;
    let rates = Rates::new(limits.rate_window, limits.max_messages_per_window, limits.max_recipients_per_window);
    let a = &config.auth;
    let auth_failures = AuthFailures::new(a.max_failures, a.failure_window, a.ban_time);
    let grey = &config.antispam.greylisting;
    let greylist = grey.enabled.then(|| Greylist::open(config.data_dir.join("greylist"), grey));
    let auth = config.auth_checks.enabled.then(|| Checker::new(&config.hostname, &config.auth_checks, &dns));
    let budget = budget::Budget::new(limits.max_inflight_bytes);
    let ctx = Arc::new(Context {
        policy,
        config,
        spool,
        queue: queue.clone(),
        users,
        tls,
        connections: Arc::new(Connections::default()),
        rates,
        auth_failures,
        dns,
        greylist,
        auth,
        signer,
        budget,
        spill_files: spill::Files::new(spill_dir),
    });

    let addrs: Vec<String> = listeners
        .iter()
        .map(|(l, mode)| format!("{} ({mode})", l.local_addr().map(|a| a.to_string()).unwrap_or_default()))
        .collect();
    let admin_addr = admin.as_ref().map(|(addr, _)| *addr);
    let admin_text = admin_addr.map_or("admin API off".to_string(), |a| format!("admin API on http://{a}"));
    println!(
        "tern: listening on {}; mail for {} goes to {}; {recovered} queued message(s) recovered; {admin_text}",
        addrs.join(", "),
        ctx.config.local.domains.join(", "),
        ctx.config.mail_root().display()
    );
    tracing::info!(listen = %addrs.join(", "), admin = ?admin_addr, recovered, "started");

    let (stop_tx, stop_rx) = watch::channel(false);
    // Every connection holds a clone of `alive`; when all are gone, `all_gone` returns.
    let (alive, mut all_gone) = mpsc::channel::<()>(1);
    for ((listener, mode), configured) in listeners.into_iter().zip(&ctx.config.listen) {
        let (ctx, mut stop, alive) = (ctx.clone(), stop_rx.clone(), alive.clone());
        let counters = Arc::new(crate::metrics::get().listener(&configured.addr.to_string()));
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((stream, peer)) => {
                            // An IPv4 client of a dual-stack listener is `::ffff:a.b.c.d`;
                            // everything after this (limits, relay networks, SPF, logs,
                            // Received) sees `a.b.c.d`.
                            let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
                            let (ctx, stop, alive, counters) = (ctx.clone(), stop.clone(), alive.clone(), counters.clone());
                            tokio::spawn(async move {
                                connection::handle(ctx, stream, peer, mode, stop, counters).await;
                                drop(alive);
                            });
                        }
                        Err(e) => accept_failed(&e).await,
                    },
                    _ = stop.changed() => break,
                }
            }
        });
    }
    tokio::spawn(local_submit::serve(ctx.clone(), submit, stop_rx.clone(), alive.clone()));
    drop(alive);
    ops.ready.store(true, std::sync::atomic::Ordering::Relaxed);

    loop {
        tokio::select! {
            _ = term.recv() => break tracing::info!("SIGTERM: stopping"),
            _ = int.recv() => break tracing::info!("SIGINT: stopping"),
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading the certificate");
                if let Some(tls) = &ctx.tls {
                    tls.reload();
                }
            }
        }
    }
    ops.ready.store(false, std::sync::atomic::Ordering::Relaxed);
    let _ = stop_tx.send(true);
    if tokio::time::timeout(grace, all_gone.recv()).await.is_err() {
        tracing::warn!("sessions still open after the grace period; closing them");
    }
    queue.stop();
    if tokio::time::timeout(grace, queue_task).await.is_err() {
        tracing::warn!("deliveries still running after the grace period; they will be retried at next start");
    }
    control.abort();
    if let Some((_, task)) = admin {
        task.abort();
    }
    let _ = std::fs::remove_file(ctx.config.data_dir.join(control::SOCKET_NAME));
    let _ = std::fs::remove_file(&submit_path);
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
    };
    Ok(QueueConfig {
        retry: config.queue.retry.clone(),
        max_age: config.queue.max_age,
        delay_notice: config.queue.delay_notice,
        concurrency: config.queue.concurrency,
        mail_root: MailRoot { path: config.mail_root(), access: config.mailbox_access()? },
        hostname: config.hostname.clone(),
        remote,
    })
}

/// Logs a failed `accept` (rate-limited: at the file-descriptor limit it fails for
/// every waiting client) and pauses the accept loop. Out of descriptors, the pause is
/// longer, so that connections being closed can free some instead of the loop
/// spinning.
async fn accept_failed(e: &std::io::Error) {
    static ACCEPT_FAILED: LogLimit = LogLimit::new(log_limit::PERIOD);
    if let Some(repeats) = ACCEPT_FAILED.admit() {
        tracing::warn!(error = %e, repeats, "accept failed");
    }
    let out_of_descriptors = matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE));
    let pause = if out_of_descriptors { 100 } else { 50 };
    tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
}
