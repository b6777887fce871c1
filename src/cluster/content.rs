//! A message's content as delivery reads it from the database: a row (chunk) at a
//! time, the last one kept, so that a delivery holds a bounded buffer whatever the
//! message's size.

use super::Cluster;
use super::writer::CHUNK;
use crate::spool::ReadAt;
use std::io;
use std::sync::Mutex;

pub struct Rows {
    pub cluster: Cluster,
    pub id: String,
    pub runtime: tokio::runtime::Handle,
    /// The chunk read last: (its number, its bytes).
    pub last: Mutex<Option<(i32, Vec<u8>)>>,
}

impl Rows {
    /// Fetches chunk `seq` on the runtime, waiting here (a blocking caller).
    fn fetch(&self, seq: i32) -> io::Result<Vec<u8>> {
        let (cluster, id) = (self.cluster.clone(), self.id.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        self.runtime.spawn(async move {
            let result = async {
                let client = cluster.client().await?;
                let row = client
                    .query_opt("SELECT data FROM contents WHERE message_id = $1 AND seq = $2", &[&id, &seq])
                    .await?;
                Ok::<_, super::Error>(row.map(|r| r.get::<_, Vec<u8>>(0)))
            }
            .await;
            let _ = tx.send(result);
        });
        match rx.recv() {
            Ok(Ok(Some(data))) => Ok(data),
            Ok(Ok(None)) => Err(io::Error::new(io::ErrorKind::NotFound, format!("content of {} is gone", self.id))),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(io::Error::other("the runtime stopped")),
        }
    }
}

impl ReadAt for Rows {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let seq = (offset / CHUNK as u64) as i32;
        let within = (offset % CHUNK as u64) as usize;
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if last.as_ref().is_none_or(|(s, _)| *s != seq) {
            *last = Some((seq, self.fetch(seq)?));
        }
        let data = &last.as_ref().expect("just set").1;
        if within >= data.len() {
            return Ok(0);
        }
        let n = buf.len().min(data.len() - within);
        buf[..n].copy_from_slice(&data[within..within + n]);
        Ok(n)
    }
}
