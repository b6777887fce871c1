//! Per-recipient reply handling against a scripted LMTP peer.

use super::*;
use crate::delivery::remote::{Pool, TlsClient};
use crate::delivery::{Delivered, Failure};
use crate::spool::{Content, RcptState, Recipient};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// What the peer does in one transaction.
#[derive(Clone, Default)]
struct Script {
    /// Replies to the RCPTs in order (`250 2.1.5 ok` when left out).
    rcpt: Vec<&'static str>,
    /// Written as is once the content is read (reply lines, or garbage).
    after: &'static str,
    /// Close the connection after `after`.
    close: bool,
}

#[derive(Clone, Default)]
struct Peer {
    scripts: Arc<Mutex<VecDeque<Script>>>,
    connections: Arc<AtomicUsize>,
    commands: Arc<Mutex<Vec<String>>>,
}

impl Peer {
    fn new(scripts: Vec<Script>) -> Peer {
        Peer { scripts: Arc::new(Mutex::new(scripts.into())), ..Peer::default() }
    }

    async fn serve<S: AsyncRead + AsyncWrite + Unpin>(self, stream: S) {
        self.connections.fetch_add(1, Ordering::SeqCst);
        let mut io = BufReader::new(stream);
        let _ = io.get_mut().write_all(b"220 fake LMTP\r\n").await;
        let (mut script, mut rcpts, mut accepted) = (Script::default(), 0, 0);
        let mut line = String::new();
        loop {
            line.clear();
            if io.read_line(&mut line).await.unwrap_or(0) == 0 {
                return;
            }
            let verb = line.split([' ', '\r']).next().unwrap_or("").to_ascii_uppercase();
            self.commands.lock().unwrap().push(line.trim_end().to_string());
            let reply = match verb.as_str() {
                "LHLO" => "250-fake\r\n250-PIPELINING\r\n250 ENHANCEDSTATUSCODES\r\n".to_string(),
                "MAIL" => {
                    script = self.scripts.lock().unwrap().pop_front().unwrap_or_default();
                    (rcpts, accepted) = (0, 0);
                    "250 2.1.0 ok\r\n".into()
                }
                "RCPT" => {
                    let r = script.rcpt.get(rcpts).copied().unwrap_or("250 2.1.5 ok");
                    rcpts += 1;
                    accepted += usize::from(r.starts_with('2'));
                    format!("{r}\r\n")
                }
                "DATA" if accepted == 0 => "554 5.5.1 no valid recipients\r\n".into(),
                "DATA" => {
                    let _ = io.get_mut().write_all(b"354 go ahead\r\n").await;
                    loop {
                        line.clear();
                        if io.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        if line == ".\r\n" {
                            break;
                        }
                    }
                    let _ = io.get_mut().write_all(script.after.as_bytes()).await;
                    if script.close {
                        return;
                    }
                    continue;
                }
                "RSET" => "250 2.0.0 ok\r\n".into(),
                "QUIT" => {
                    let _ = io.get_mut().write_all(b"221 bye\r\n").await;
                    return;
                }
                _ => "500 5.5.2 what\r\n".into(),
            };
            if io.get_mut().write_all(reply.as_bytes()).await.is_err() {
                return;
            }
        }
    }

    /// Serves on a loopback TCP port; gives `host:port`.
    async fn tcp(&self) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let peer = self.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                tokio::spawn(peer.clone().serve(s));
            }
        });
        addr
    }
}

fn config() -> RemoteConfig {
    RemoteConfig {
        hostname: "tern.test".into(),
        port: 25,
        allow_loopback: true,
        connect_timeout: Duration::from_secs(5),
        greeting_timeout: Duration::from_secs(5),
        command_timeout: Duration::from_secs(5),
        data_timeout: Duration::from_millis(500),
        smarthost: None,
        routes: HashMap::new(),
        auth: None,
        smarthost_tls: crate::config::SmarthostTls::None,
        starttls: false,
        tls: Arc::new(TlsClient::new(None).unwrap()),
        own_addrs: Vec::new(),
        pool: Arc::new(Pool::new(4)),
        mta_sts: None,
        dane: None,
    }
}

fn recipients(names: &[&str]) -> Vec<Recipient> {
    names
        .iter()
        .map(|n| Recipient {
            address: format!("{n}@a.test"),
            local: true,
            original: format!("{n}@a.test"),
            orcpt: None,
            notify: None,
            state: RcptState::Queued,
        })
        .collect()
}

/// Delivers one message to `names` at `target`; results in recipient order.
async fn send(config: &RemoteConfig, target: &Target, names: &[&str]) -> Vec<Result<Delivered, Failure>> {
    send_utf8(config, target, names, false).await
}

/// [`send`], the message marked SMTPUTF8 when `smtputf8`.
async fn send_utf8(
    config: &RemoteConfig,
    target: &Target,
    names: &[&str],
    smtputf8: bool,
) -> Vec<Result<Delivered, Failure>> {
    let rcpts = recipients(names);
    let content = Content::from(Arc::new(b"Subject: t\r\n\r\n.dot\r\nbody\r\n".to_vec()));
    let job = Job {
        id: "T1",
        sender: "s@b.test",
        recipients: rcpts.iter().enumerate().collect(),
        content: &content,
        smtputf8,
        eight_bit: false,
        ret: None,
        envid: None,
        requiretls: false,
        tls_optional: false,
    };
    let (mut outcome, via) = deliver(config, target, &job).await;
    assert_eq!(via.relay, format!("lmtp:{}", target.name()));
    outcome.sort_by_key(|(i, _)| *i);
    assert_eq!(outcome.iter().map(|(i, _)| *i).collect::<Vec<_>>(), (0..names.len()).collect::<Vec<_>>());
    outcome.into_iter().map(|(_, r)| r).collect()
}

/// `delivered`, or the failure as `temporary 4.4.2` / `permanent 5.2.2`.
fn show(r: &Result<Delivered, Failure>) -> String {
    match r {
        Ok(d) => {
            assert!(!d.relayed && !d.dsn_passed_on);
            "delivered".into()
        }
        Err(f) => format!("{} {}", if f.temporary { "temporary" } else { "permanent" }, f.detail.status),
    }
}

#[tokio::test]
async fn each_recipient_gets_its_own_reply() {
    let peer = Peer::new(vec![Script {
        rcpt: vec!["250 2.1.5 ok", "550 5.1.1 unknown", "250 2.1.5 ok", "250 2.1.5 ok"],
        after: "250 2.0.0 saved\r\n552 5.2.2 mailbox full\r\n452 4.2.2 over quota for now\r\n",
        close: false,
    }]);
    let target = Target::parse(&peer.tcp().await);
    let results = send(&config(), &target, &["a", "nobody", "b", "c"]).await;
    let shown: Vec<String> = results.iter().map(show).collect();
    assert_eq!(shown, ["delivered", "permanent 5.1.1", "permanent 5.2.2", "temporary 4.2.2"]);
    let detail = results[2].as_ref().unwrap_err().detail.to_string();
    assert!(detail.contains("said: 552 5.2.2 mailbox full"), "{detail}");
}

#[tokio::test]
async fn garbage_closed_or_missing_replies_defer_the_rest() {
    for (after, close) in [
        // A garbage line in place of the second reply.
        ("250 2.0.0 saved\r\nhello there\r\n", false),
        // The connection closed after one reply.
        ("250 2.0.0 saved\r\n", true),
        // One reply, then silence past the time limit.
        ("250 2.0.0 saved\r\n", false),
        // A multi-line reply whose lines disagree.
        ("250 2.0.0 saved\r\n250-2.0.0 one\r\n550 5.0.0 two\r\n", false),
    ] {
        let peer = Peer::new(vec![Script { rcpt: Vec::new(), after, close }]);
        let config = config();
        let target = Target::parse(&peer.tcp().await);
        let results = send(&config, &target, &["a", "b", "c"]).await;
        let shown: Vec<String> = results.iter().map(show).collect();
        assert_eq!(shown, ["delivered", "temporary 4.4.2", "temporary 4.4.2"], "{after:?}");
        let detail = results[1].as_ref().unwrap_err().detail.to_string();
        assert!(detail.contains("1 of 3 came"), "{detail}");
        // The connection is not reused after a transaction that ended badly.
        assert!(config.pool.take(&format!("lmtp|{}", target.name())).is_none());
    }
}

#[tokio::test]
async fn a_closed_connection_before_any_reply_defers_everyone() {
    let peer = Peer::new(vec![Script { rcpt: Vec::new(), after: "", close: true }]);
    let target = Target::parse(&peer.tcp().await);
    let results = send(&config(), &target, &["a", "b"]).await;
    assert_eq!(results.iter().map(show).collect::<Vec<_>>(), ["temporary 4.4.2", "temporary 4.4.2"]);
}

#[tokio::test]
async fn an_unreachable_server_defers_everyone() {
    // A port that was free a moment ago: nothing listens there now.
    let addr = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap().to_string();
    let results = send(&config(), &Target::parse(&addr), &["a", "b"]).await;
    assert_eq!(results.iter().map(show).collect::<Vec<_>>(), ["temporary 4.4.1", "temporary 4.4.1"]);
    let detail = results[0].as_ref().unwrap_err().detail.to_string();
    assert!(detail.contains(&format!("LMTP server {addr}: cannot connect")), "{detail}");
    let socket = Target::parse("unix:/nonexistent/lmtp");
    let results = send(&config(), &socket, &["a"]).await;
    let detail = results[0].as_ref().unwrap_err().detail.to_string();
    assert!(detail.starts_with("4.4.1 LMTP server /nonexistent/lmtp: cannot connect"), "{detail}");
}

#[tokio::test]
async fn connections_are_reused_with_rset() {
    let ok = Script { rcpt: Vec::new(), after: "250 2.0.0 saved\r\n", close: false };
    let peer = Peer::new(vec![ok.clone(), ok]);
    let (config, target) = (config(), Target::parse(&peer.tcp().await));
    for _ in 0..2 {
        assert_eq!(send(&config, &target, &["a"]).await.iter().map(show).collect::<Vec<_>>(), ["delivered"]);
    }
    assert_eq!(peer.connections.load(Ordering::SeqCst), 1);
    let commands = peer.commands.lock().unwrap().clone();
    let verbs: Vec<&str> = commands.iter().map(|c| c.split(' ').next().unwrap()).collect();
    assert_eq!(verbs, ["LHLO", "MAIL", "RCPT", "DATA", "RSET", "MAIL", "RCPT", "DATA"]);
    assert_eq!(commands[0], "LHLO tern.test");
    assert_eq!(commands[2], "RCPT TO:<a@a.test>");
}

#[tokio::test]
async fn smtputf8_is_needed_only_for_addresses_that_are_not_ascii() {
    let ok = Script { rcpt: Vec::new(), after: "250 2.0.0 saved\r\n", close: false };
    let peer = Peer::new(vec![ok]);
    let (config, target) = (config(), Target::parse(&peer.tcp().await));
    // UTF-8 in the content only: the server (without SMTPUTF8) stores it as it is.
    assert_eq!(send_utf8(&config, &target, &["a"], true).await.iter().map(show).collect::<Vec<_>>(), ["delivered"]);
    assert_eq!(peer.commands.lock().unwrap()[1], "MAIL FROM:<s@b.test>");
    // A recipient whose address is not ASCII cannot be named to it.
    let results = send_utf8(&config, &target, &["jos\u{e9}"], true).await;
    assert_eq!(results.iter().map(show).collect::<Vec<_>>(), ["permanent 5.6.7"]);
}

#[tokio::test]
async fn over_a_unix_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lmtp");
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    let peer = Peer::new(vec![Script { rcpt: Vec::new(), after: "250 2.0.0 a\r\n250 2.0.0 b\r\n", close: false }]);
    let server = peer.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(server.clone().serve(s));
        }
    });
    let target = Target::parse(&format!("unix:{}", path.display()));
    let results = send(&config(), &target, &["a", "b"]).await;
    assert_eq!(results.iter().map(show).collect::<Vec<_>>(), ["delivered", "delivered"]);
    let detail = results[0].as_ref().unwrap().detail.to_string();
    assert!(detail.contains(&format!("{} [127.0.0.1] said: 250 2.0.0 a", path.display())), "{detail}");
}
