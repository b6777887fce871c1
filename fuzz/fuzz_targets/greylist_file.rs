//! Greylisting state read back from an arbitrary `<data_dir>/greylist` file.
//!
//! Never panics; the state loads, answers, and rewrites a file that loads again.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tern::config::Greylisting;
use tern::policy::greylist::{Greylist, Verdict};
use tern::smtp::address::Mailbox;

fuzz_target!(|data: &[u8]| {
    let dir = std::env::temp_dir().join(format!("tern-fuzz-greylist-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join("greylist");
    std::fs::write(&path, data).expect("write state");
    let config = Greylisting { enabled: true, ..Greylisting::default() };
    let list = Greylist::open(path.clone(), &config);
    let to = Mailbox::parse("user@local.test").expect("address");
    let first = list.check("192.0.2.1".parse().unwrap(), None, &to);
    assert!(matches!(first, Verdict::Defer(_) | Verdict::Pass));
    drop(list);
    let again = Greylist::open(path, &config);
    let _ = again.check("192.0.2.1".parse().unwrap(), None, &to);
});
