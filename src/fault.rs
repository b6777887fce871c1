//! Fault injection for tests: named points in the code that can be made to fail.
//!
//! Built only with the cargo feature `fault-injection`; without it [`point`] is an
//! empty function and costs nothing. With it, the environment variable `TERN_FAULTS`
//! says which points fail and how often, as comma-separated `name=action` entries:
//! `attempt=panic` panics at the point `attempt` every time it is reached,
//! `attempt=panic*2` only the first two times.

/// Fails here if `TERN_FAULTS` asks for it.
#[cfg(feature = "fault-injection")]
pub fn point(name: &str) {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    static FAULTS: OnceLock<Mutex<HashMap<String, Fault>>> = OnceLock::new();
    let faults = FAULTS.get_or_init(|| Mutex::new(parse(&std::env::var("TERN_FAULTS").unwrap_or_default())));
    let fire = faults.lock().unwrap_or_else(|e| e.into_inner()).get_mut(name).is_some_and(Fault::take);
    if fire {
        panic!("fault injected at {name}");
    }
}

/// Does nothing: fault injection is not built in.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn point(_name: &str) {}

/// A fault at one point: how many more times it fires (`None`: always).
#[cfg(any(feature = "fault-injection", test))]
#[derive(Debug, PartialEq, Eq)]
struct Fault {
    remaining: Option<u32>,
}

#[cfg(any(feature = "fault-injection", test))]
impl Fault {
    /// True when the fault fires this time.
    fn take(&mut self) -> bool {
        match &mut self.remaining {
            None => true,
            Some(0) => false,
            Some(n) => {
                *n -= 1;
                true
            }
        }
    }
}

/// Reads `name=panic` and `name=panic*N` entries; anything else is ignored.
#[cfg(any(feature = "fault-injection", test))]
fn parse(spec: &str) -> std::collections::HashMap<String, Fault> {
    spec.split(',')
        .filter_map(|entry| {
            let (name, action) = entry.trim().split_once('=')?;
            let remaining = match action.trim().split_once('*') {
                None if action.trim() == "panic" => None,
                Some(("panic", n)) => Some(n.trim().parse().ok()?),
                _ => return None,
            };
            Some((name.trim().to_string(), Fault { remaining }))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_entries_and_counts_down() {
        let mut faults = parse("attempt=panic*2, spool = panic ,bad=explode,worse,x=panic*many");
        assert_eq!(faults.len(), 2);
        assert_eq!(faults["spool"], Fault { remaining: None });
        let attempt = faults.get_mut("attempt").expect("parsed");
        assert!(attempt.take() && attempt.take() && !attempt.take());
        let spool = faults.get_mut("spool").expect("parsed");
        assert!(spool.take() && spool.take());
    }
}
