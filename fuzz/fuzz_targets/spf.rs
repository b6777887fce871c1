//! `policy::spf::check_host` with the fuzz input as the SPF record of every name
//! (so `include:` and `redirect=` evaluate it again), every name also having an
//! address, an MX and a PTR name.
//!
//! Never panics; ends within a bounded number of lookups (the limits of RFC 7208
//! §4.6.4); a record that does not parse is a permanent error.

#![no_main]

use libfuzzer_sys::fuzz_target;
use std::future::Future;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};
use tern::dns::DnsError;
use tern::policy::auth::results::spf_word;
use tern::policy::spf::{Record, Resolve, check_host};

struct Echo {
    record: String,
    lookups: AtomicUsize,
}

impl Echo {
    fn answer<T>(&self, value: T) -> Result<Vec<T>, DnsError> {
        self.lookups.fetch_add(1, Ordering::Relaxed);
        Ok(vec![value])
    }
}

impl Resolve for Echo {
    async fn txt(&self, _: &str) -> Result<Vec<String>, DnsError> {
        self.answer(self.record.clone())
    }
    async fn addresses(&self, _: &str, v6: bool) -> Result<Vec<IpAddr>, DnsError> {
        self.answer(if v6 { "2001:db8::1".parse().unwrap() } else { "192.0.2.1".parse().unwrap() })
    }
    async fn mx(&self, _: &str) -> Result<Vec<String>, DnsError> {
        self.answer("mx.x.test".into())
    }
    async fn ptr(&self, _: IpAddr) -> Result<Vec<String>, DnsError> {
        self.answer("x.test".into())
    }
}

/// The lookups above never wait, so the evaluation is ready at the first poll.
fn ready<F: Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    match future.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("the evaluation waited on an answer that was ready"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&family, rest)) = data.split_first() else { return };
    let Ok(terms) = std::str::from_utf8(rest) else { return };
    let record = format!("v=spf1 {terms}");
    let echo = Echo { record: record.clone(), lookups: AtomicUsize::new(0) };
    let ip: IpAddr = if family & 1 == 0 { "192.0.2.2".parse().unwrap() } else { "2001:db8::2".parse().unwrap() };
    let verdict = ready(check_host(&echo, ip, "x.test", "a@x.test", "helo.test", "mx.test"));
    assert!(echo.lookups.load(Ordering::Relaxed) <= 250, "too many lookups for {record:?}");
    if Record::parse(&record).is_err() {
        assert_eq!(spf_word(verdict.result), "permerror", "{record:?}");
    }
});
