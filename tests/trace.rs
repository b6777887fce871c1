//! The message trace against the real server: a message deferred by a peer and then
//! delivered (across a restart), a local delivery, unknown ids, `tern queue trace`,
//! and the removal of expired daily trace files.

mod common;

use common::outbound::{FakePeer, wait_for};
use common::*;
use serde_json::{Value, json};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

/// `GET path` on the admin listener with the server's token: (status, JSON body).
fn get(t: &Tern, path: &str) -> (u16, Value) {
    let url = format!("{}{path}", t.admin_url());
    let auth = format!("Authorization: Bearer {}", t.admin_token());
    let out = t.curl(&["-H", &auth, "-w", "\n%{http_code}", &url]);
    out.assert_success(&format!("curl {path}"));
    let (body, status) = out.stdout.rsplit_once('\n').expect("status line");
    (status.trim().parse().expect("status"), serde_json::from_str(body).unwrap_or(Value::Null))
}

fn post(t: &Tern, path: &str) {
    let url = format!("{}{path}", t.admin_url());
    let auth = format!("Authorization: Bearer {}", t.admin_token());
    t.curl(&["-X", "POST", "-H", &auth, "-f", &url]).assert_success(&format!("POST {path}"));
}

/// The message's events, once `done` holds for them.
fn wait_trace(t: &Tern, id: &str, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    wait_for(
        WAIT,
        what,
        || {
            let (status, body) = get(t, &format!("/api/v1/messages/{id}/trace"));
            let events = body["events"].as_array().cloned().unwrap_or_default();
            (status == 200 && done(&events)).then_some(events)
        },
        || format!("{:?}\n{}", get(t, &format!("/api/v1/messages/{id}/trace")), t.logs()),
    )
}

fn kinds(events: &[Value]) -> Vec<&str> {
    events.iter().map(|e| e["event"].as_str().unwrap_or("?")).collect()
}

fn send(t: &Tern, rcpt: &str) -> String {
    let out = t.py(&format!(
        "s = connect()\nprint(send(s, 'sender@localhost', [{rcpt:?}], 'Subject: trace\\r\\n\\r\\nhello\\r\\n'))\ns.quit()\n"
    ));
    out.assert_success("send with smtplib");
    queue_id(out.stdout.trim()).expect("queue id")
}

#[test]
fn a_deferred_then_delivered_message_keeps_its_journey_across_a_restart() {
    let port = free_port();
    let refusing = json!({ "act": { "RCPT": { "reply": "451 4.7.1 greylisted, try later" } } });
    let peer = FakePeer::start("127.0.0.1", port, &refusing);
    let mut t = Tern::start(&format!(
        "{LOCAL_OPEN}\n[queue]\nretry = [\"1h\"]\n\n[relay.routes]\n\"a.test\" = \"127.0.0.1:{port}\"\n"
    ));
    let id = send(&t, "rcpt@a.test");
    wait_trace(&t, &id, "the first attempt", |e| kinds(e).contains(&"attempt"));

    t.restart();
    drop(peer);
    let _peer = FakePeer::start("127.0.0.1", port, &json!({}));
    post(&t, &format!("/api/v1/queue/{id}/flush"));
    let events = wait_trace(&t, &id, "the final state", |e| kinds(e).contains(&"finished"));
    assert_eq!(kinds(&events), ["received", "stored", "attempt", "admin", "attempt", "finished"], "{events:#?}");

    let received = &events[0];
    assert_eq!(
        (received["client"].as_str(), received["sender"].as_str()),
        (Some("127.0.0.1"), Some("sender@localhost"))
    );
    assert_eq!(received["recipients"], json!(["rcpt@a.test"]));
    assert!(received["helo"].is_string() && received["size"].as_u64() > Some(0), "{received}");
    let (first, second) = (&events[2], &events[4]);
    assert_eq!((first["destination"].as_str(), first["tls"].as_str()), (Some("a.test"), Some("none")), "{first}");
    let result = &first["results"][0];
    assert_eq!((result["recipient"].as_str(), result["outcome"].as_str()), (Some("rcpt@a.test"), Some("deferred")));
    assert_eq!(result["detail"]["server"]["code"], 451, "{first}");
    assert_eq!(result["detail"]["server"]["ip"], "127.0.0.1", "{first}");
    assert_eq!(result["detail"]["status"], "4.7.1", "{first}");
    assert!(result["detail"]["server"]["text"].as_str().unwrap_or("").contains("greylisted"), "{first}");
    assert_eq!(events[3]["action"], "flush");
    assert_eq!(second["results"][0]["outcome"], "delivered", "{second}");
    assert_eq!(second["results"][0]["detail"]["server"]["code"], 250, "{second}");
    assert_eq!((events[5]["state"].as_str(), events[5]["delivered"].as_u64()), (Some("delivered"), Some(1)));
    let times: Vec<i64> = events.iter().map(|e| e["at"].as_i64().expect("at")).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");

    // The same through the control socket, readably.
    let out = t.tern_cmd(&["queue", "trace", &id]);
    out.assert_success("tern queue trace");
    let text = &out.stdout;
    for says in [
        "received from 127.0.0.1",
        "stored in the spool",
        "attempt: a.test",
        "451",
        "deferred",
        "flush by the mail administrator",
        "rcpt@a.test: delivered",
        "finished: delivered",
    ] {
        assert!(text.contains(says), "{says:?} missing from:\n{text}");
    }
    assert_eq!(text.lines().filter(|l| l.contains("attempt: a.test")).count(), 2, "{text}");
}

#[test]
fn a_local_message_unknown_ids_and_expired_files() {
    let t = Tern::start(&format!("{LOCAL_OPEN}\n[admin]\nlisten = \"127.0.0.1:0\"\ntrace_retention = \"2s\"\n"));
    // A daily file whose day ended long ago goes at the next sweep (once a second here).
    let old = t.data_dir.join("trace").join("2000-01-01.jsonl");
    std::fs::write(&old, b"{\"id\":\"0000000000000001\",\"at\":0,\"event\":\"stored\"}\n").expect("write old trace");

    let id = send(&t, "someone@localhost");
    let events = wait_trace(&t, &id, "local delivery", |e| kinds(e).contains(&"finished"));
    assert_eq!(kinds(&events), ["received", "stored", "attempt", "finished"], "{events:#?}");
    assert_eq!(events[2]["destination"], "local");
    assert_eq!(events[2]["results"][0]["outcome"], "delivered");
    assert!(events[2]["results"][0]["detail"]["text"].as_str().unwrap_or("").contains("maildir"), "{events:#?}");

    let (status, body) = get(&t, "/api/v1/messages/0123456789ABCDEF/trace");
    assert_eq!(status, 404, "{body}");
    assert!(body["error"].as_str().is_some_and(|e| e.contains("no trace")), "{body}");
    assert_eq!(get(&t, "/api/v1/messages/nope/trace").0, 400);
    let out = t.tern_cmd(&["queue", "trace", "0123456789ABCDEF"]);
    assert!(!out.success() && out.stderr.contains("no trace of"), "{}", out.all());

    wait_for(WAIT, "the expired trace file removed", || (!old.exists()).then_some(()), || t.logs());
    // Today's file is kept, and the message's trace with it.
    assert_eq!(get(&t, &format!("/api/v1/messages/{id}/trace")).0, 200);
}
