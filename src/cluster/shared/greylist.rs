//! Greylisting triplets in the `greylist` table, so that a client greylisted by one
//! node passes on any other once the delay is over. Same rules as the local greylist
//! ([`crate::policy::greylist`]), decided in one `INSERT … ON CONFLICT DO UPDATE`
//! by the database's clock: one round trip per recipient, no lock held between.

use super::{Error, guarded};
use crate::cluster::Cluster;
use crate::config::Greylisting;
use crate::policy::greylist::{Key, Verdict};
use std::time::Duration;

/// The decision, in one statement. `$2` the delay, `$3` the retry window, `$4` the
/// expiry, in seconds. An entry past its window (not passed) or unused for longer
/// than the expiry (passed) starts over as if new.
const CHECK: &str = "
-- Counters need no wait for the WAL flush (see `shared`): only this transaction.
WITH relaxed AS (SELECT set_config('synchronous_commit', 'off', true))
INSERT INTO greylist AS g (key, first_seen, last_seen, passed)
SELECT $1::bytea, now(), now(), $2::float8 <= 0 FROM relaxed
ON CONFLICT (key) DO UPDATE SET
    first_seen = CASE
        WHEN (g.passed AND g.last_seen < now() - $4::float8 * interval '1 second')
          OR (NOT g.passed AND g.first_seen < now() - $3::float8 * interval '1 second') THEN now()
        ELSE g.first_seen END,
    passed = CASE
        WHEN (g.passed AND g.last_seen < now() - $4::float8 * interval '1 second')
          OR (NOT g.passed AND g.first_seen < now() - $3::float8 * interval '1 second') THEN $2::float8 <= 0
        WHEN g.passed THEN true
        ELSE g.first_seen <= now() - $2::float8 * interval '1 second' END,
    last_seen = now()
RETURNING passed, extract(epoch FROM first_seen + $2::float8 * interval '1 second' - now())::float8";

/// The cluster's greylist, with this configuration's delays.
pub struct Greylist {
    cluster: &'static Cluster,
    delay: f64,
    retry_window: f64,
    expire: f64,
}

impl Greylist {
    pub fn new(cluster: &'static Cluster, config: &Greylisting) -> Greylist {
        Greylist {
            cluster,
            delay: config.delay.as_secs_f64(),
            retry_window: config.retry_window.as_secs_f64(),
            expire: config.expire.as_secs_f64(),
        }
    }

    /// The decision for a triplet. When the database fails the recipient passes
    /// (greylisting is a filter on top of the others, and refusing every stranger for
    /// the length of an outage would cost more than it keeps out); the log says so.
    pub async fn check(&self, key: &Key) -> Verdict {
        guarded("greylist", self.query(key)).await.unwrap_or(Verdict::Pass)
    }

    async fn query(&self, key: &Key) -> Result<Verdict, Error> {
        let client = self.cluster.client().await?;
        let statement = client.prepare_cached(CHECK).await?;
        let row =
            client.query_one(&statement, &[&key.as_slice(), &self.delay, &self.retry_window, &self.expire]).await?;
        let passed: bool = row.get(0);
        let left: f64 = row.get(1);
        Ok(if passed { Verdict::Pass } else { Verdict::Defer(Duration::from_secs_f64(left.max(0.001))) })
    }
}
