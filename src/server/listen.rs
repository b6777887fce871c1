//! Listening sockets, IPv4 and IPv6 side by side.

use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};
use tokio::net::TcpSocket;

/// Pending connections a listener holds: room for bursts of new clients.
const BACKLOG: libc::c_int = 1024;

/// A listening socket on `addr`, non-blocking, made without an async runtime (so that
/// it can be bound before privileges are dropped). An IPv6 wildcard listener takes
/// IPv4 connections too (as `::ffff:a.b.c.d`, which the accept loop turns back into
/// `a.b.c.d`), unless `v6only`.
pub fn bind(addr: SocketAddr, v6only: bool) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    if v6only {
        set_v6only(&socket)?;
    }
    socket.bind(addr)?;
    let fd = socket.into_raw_fd();
    // SAFETY: `fd` is the socket just given up by `TcpSocket`; the std listener owns
    // it from here on, and closes it even if `listen` fails.
    let listener = unsafe { TcpListener::from_raw_fd(fd) };
    // SAFETY: listen only reads its arguments; the descriptor is open.
    if unsafe { libc::listen(fd, BACKLOG) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// True when the listener on `addr` must leave IPv4 to another one: it is an IPv6
/// wildcard (`[::]:P`) and `all` has an IPv4 listener on the same port, which a
/// dual-stack socket would collide with ("Address already in use").
pub fn needs_v6only(addr: SocketAddr, all: &[SocketAddr]) -> bool {
    addr.is_ipv6()
        && addr.ip().is_unspecified()
        && addr.port() != 0
        && all.iter().any(|other| other.is_ipv4() && other.port() == addr.port())
}

/// IPV6_V6ONLY, set before `bind` (the only time it counts).
fn set_v6only(socket: &TcpSocket) -> std::io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: the descriptor is the socket's own and open; the option value is a
    // c_int that outlives the call, and its size is passed with it.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IPV6,
            libc::IPV6_V6ONLY,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[test]
    fn an_ipv6_wildcard_with_an_ipv4_twin_is_v6only() {
        let all = addrs(&["0.0.0.0:25", "[::]:25", "[::]:587", "127.0.0.1:465", "[::]:465", "[::1]:2525"]);
        let v6only: Vec<bool> = all.iter().map(|a| needs_v6only(*a, &all)).collect();
        assert_eq!(v6only, [false, true, false, false, true, false]);
        assert!(!needs_v6only("[::]:0".parse().unwrap(), &addrs(&["0.0.0.0:0"])));
    }

    #[test]
    fn ipv4_and_ipv6_wildcards_share_a_port() {
        // Without IPv6 on this machine there is nothing to check.
        if std::net::TcpListener::bind("[::1]:0").is_err() {
            return;
        }
        let v6 = bind("[::]:0".parse().unwrap(), true).unwrap();
        let port = v6.local_addr().unwrap().port();
        let v4 = bind(SocketAddr::from(([127, 0, 0, 1], port)), false);
        assert!(v4.is_ok(), "{v4:?}");
    }
}
