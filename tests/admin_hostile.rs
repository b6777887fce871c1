//! Slow and hostile clients of the admin listener: huge request lines and header
//! blocks, a slowloris and idle sockets, more connections than it serves, a body far
//! over the limit. Each is refused or closed, and the listener goes on answering.

mod common;

use common::*;
use std::time::Duration;

/// The test servers' `[admin] header_timeout`: short, so that the tests are fast.
const HEADER_TIMEOUT: &str = "1s";

fn server() -> Tern {
    server_with(HEADER_TIMEOUT)
}

fn server_with(header_timeout: &str) -> Tern {
    Tern::start(&format!("{LOCAL_OPEN}\n[admin]\nlisten = \"127.0.0.1:0\"\nheader_timeout = \"{header_timeout}\"\n"))
}

/// The admin listener's `host:port`.
fn admin_addr(t: &Tern) -> String {
    t.admin_url().trim_start_matches("http://").to_string()
}

/// The status curl got for `args` (then the URL), or 0 when it got none.
fn status(t: &Tern, args: &[&str], path: &str) -> u16 {
    let url = format!("{}{path}", t.admin_url());
    let mut all = vec!["-o", "/dev/null", "-w", "%{http_code}"];
    all.extend_from_slice(args);
    all.push(&url);
    let out = t.curl(&all);
    out.stdout.trim().parse().unwrap_or(0)
}

#[track_caller]
fn assert_healthy(t: &Tern) {
    assert_eq!(status(t, &[], "/healthz"), 200, "/healthz does not answer\n{}", t.logs());
}

#[test]
fn huge_request_lines_and_header_blocks_are_refused() {
    let t = server();
    let long = "a".repeat(100 * 1024);
    let code = status(&t, &[], &format!("/api/v1/queue?sender={long}"));
    assert!([400, 414, 431].contains(&code), "a 100 KB query string got {code}\n{}", t.logs());
    let big_header = format!("X-Big: {long}");
    assert_eq!(status(&t, &["-H", &big_header], "/healthz"), 431, "a 100 KB header");
    // Many small headers adding up to more than the limit.
    let mut many = Vec::new();
    for i in 0..300 {
        many.push("-H".to_string());
        many.push(format!("X-Header-{i}: {}", "b".repeat(100)));
    }
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    assert_eq!(status(&t, &many, "/healthz"), 431, "300 headers of 100 bytes");
    assert_healthy(&t);
}

#[test]
fn a_slowloris_is_closed_after_the_header_timeout_while_others_are_served() {
    let t = server();
    // One connection sends a header line every 200 ms, never ending its head; another
    // sends nothing at all. Both must be closed about a second after they opened,
    // while /healthz answers all along.
    let script = format!(
        r#"
import socket, subprocess, time
host, port = "{addr}".rsplit(":", 1)
slow = socket.create_connection((host, int(port)), timeout=10)
idle = socket.create_connection((host, int(port)), timeout=10)
start = time.monotonic()
slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
slow.settimeout(0.2)
closed = None
answered = 0
for i in range(100):
    try:
        slow.sendall(b"X-Slow-%d: y\r\n" % i)
        if slow.recv(4096) == b"":
            closed = time.monotonic() - start
            break
    except socket.timeout:
        pass
    except (BrokenPipeError, ConnectionResetError):
        closed = time.monotonic() - start
        break
    if i % 2 == 0:
        code = subprocess.run(["curl", "-sS", "--max-time", "5", "-o", "/dev/null", "-w", "%{{http_code}}",
                               "http://{addr}/healthz"], capture_output=True, text=True).stdout
        assert code == "200", "healthz answered %r during the slowloris" % code
        answered += 1
assert closed is not None, "the slowloris was never closed"
assert 0.8 <= closed <= 5, "closed after %.2f s" % closed
assert answered >= 2, answered
idle.settimeout(5)
assert idle.recv(1) == b"", "the idle connection got data"
print("closed after %.2f s" % closed)
"#,
        addr = admin_addr(&t)
    );
    let out = t.python(&script);
    out.assert_success("a slowloris and an idle connection");
    assert_healthy(&t);
}

#[test]
fn connections_beyond_the_cap_are_closed_until_slots_free() {
    // 64 idle connections take every slot: the 65th (accepted after them, the
    // listener taking connections in order) is closed at once; once the idle ones
    // time out, the listener answers again. The timeout is long enough that none of
    // the 64 is let go before the 65th is refused, on a busy machine too.
    let t = server_with("3s");
    let script = format!(
        r#"
import socket, time
host, port = "{addr}".rsplit(":", 1)
held = []
for _ in range(64):
    held.append(socket.create_connection((host, int(port)), timeout=5))
extra = socket.create_connection((host, int(port)), timeout=5)
start = time.monotonic()
try:
    extra.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    got = extra.recv(4096)
except ConnectionResetError:
    got = b""
assert got == b"", "a connection over the cap was served: %r" % got[:100]
assert time.monotonic() - start < 2.0, "the connection over the cap was held open"
for s in held:
    assert s.recv(1) == b""
print("ok")
"#,
        addr = admin_addr(&t)
    );
    let out = t.python(&script);
    out.assert_success("65 connections");
    assert!(t.logs().contains("admin: too many connections; closed"), "{}", t.logs());
    common::outbound::wait_for(
        Duration::from_secs(10),
        "/healthz answering again",
        || (status(&t, &[], "/healthz") == 200).then_some(()),
        || t.logs(),
    );
}

#[test]
fn a_body_over_the_limit_is_refused_with_413() {
    let t = server();
    let body = t.path().join("big.json");
    std::fs::write(&body, vec![b'x'; 10 * 1024 * 1024]).expect("write 10 MB");
    let data = format!("@{}", body.display());
    let auth = format!("Authorization: Bearer {}", t.admin_token());
    for headers in [vec!["-H", auth.as_str()], vec![]] {
        let mut args = vec!["-X", "POST", "-H", "Content-Type: application/json", "--data-binary", data.as_str()];
        args.extend(headers);
        assert_eq!(status(&t, &args, "/api/v1/queue/flush"), 413, "10 MB POST with {args:?}\n{}", t.logs());
    }
    // A small body is no trouble.
    let args = ["-X", "POST", "-H", &auth, "-H", "Content-Type: application/json", "--data", "{}"];
    assert_eq!(status(&t, &args, "/api/v1/queue/flush"), 200);
    assert_healthy(&t);
}
