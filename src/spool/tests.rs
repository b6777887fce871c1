use super::*;

fn envelope(spool: &Spool, rcpts: usize) -> Envelope {
    envelope_with_id(spool.new_id(), rcpts)
}

/// An envelope with `rcpts` queued local recipients.
pub(super) fn envelope_with_id(id: String, rcpts: usize) -> Envelope {
    Envelope {
        id,
        arrival: 0,
        sender: "a@x.test".into(),
        size: 5,
        recipients: (0..rcpts)
            .map(|i| Recipient {
                address: format!("u{i}@localhost"),
                local: true,
                original: format!("u{i}@localhost"),
                orcpt: None,
                notify: None,
                state: RcptState::Queued,
            })
            .collect(),
        ..Default::default()
    }
}

fn open(dir: &std::path::Path, rt: &tokio::runtime::Runtime) -> (Spool, Vec<Stored>) {
    let spool = Spool::open(dir, Options::default()).unwrap();
    let pending = rt.block_on(spool.load()).unwrap();
    (spool, pending)
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

#[test]
fn store_recover_and_finish() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let (spool, pending) = open(dir.path(), &rt);
    assert!(pending.is_empty());
    let e1 = envelope(&spool, 2);
    let e2 = envelope(&spool, 1);
    assert!(e1.id < e2.id);
    let s1 = rt.block_on(spool.store(&e1, b"hello")).unwrap();
    rt.block_on(spool.store(&e2, b"world")).unwrap();
    assert_eq!(spool.read_content(&s1).unwrap(), b"hello");
    let delivered = RcptState::Delivered { at: 1, detail: Detail::new((2, 0, 0), "ok") };
    rt.block_on(spool.record(&[Change::Recipient { id: e1.id.clone(), index: 0, state: delivered.clone() }])).unwrap();
    rt.block_on(spool.record(&[Change::Done { id: e2.id.clone() }])).unwrap();
    drop(spool);

    let (spool, pending) = open(dir.path(), &rt);
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].envelope.id, e1.id);
    assert_eq!(pending[0].envelope.recipients[0].state, delivered);
    assert_eq!(pending[0].envelope.recipients[1].state, RcptState::Queued);
    assert_eq!(spool.read_content(&pending[0]).unwrap(), b"hello");
    rt.block_on(spool.record(&[Change::Done { id: e1.id.clone() }])).unwrap();
    drop(spool);

    // Every message is finished: only the newest (empty) segments remain.
    let (_spool, pending) = open(dir.path(), &rt);
    assert!(pending.is_empty());
    let segments = std::fs::read_dir(dir.path()).unwrap().count();
    assert!(segments <= 2, "{segments} segments left");
}

/// A hold is a change like a recipient's result: it survives a restart, and
/// compaction copies the message held.
#[test]
fn hold_survives_restart_and_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let (spool, _) = open(dir.path(), &rt);
    let (e1, e2) = (envelope(&spool, 1), envelope(&spool, 1));
    rt.block_on(spool.store(&e1, b"one")).unwrap();
    rt.block_on(spool.store(&e2, b"two")).unwrap();
    rt.block_on(spool.record(&[Change::Hold { id: e1.id.clone(), held: true }])).unwrap();
    rt.block_on(spool.record(&[Change::Hold { id: e2.id.clone(), held: true }])).unwrap();
    rt.block_on(spool.record(&[Change::Hold { id: e2.id.clone(), held: false }])).unwrap();
    drop(spool);
    let (spool, pending) = open(dir.path(), &rt);
    let held: Vec<bool> = pending.iter().map(|s| s.envelope.held).collect();
    assert_eq!(held, [true, false]);
    rt.block_on(spool.compact()).unwrap();
    drop(spool);
    let (_spool, pending) = open(dir.path(), &rt);
    let held: Vec<bool> = pending.iter().map(|s| s.envelope.held).collect();
    assert_eq!(held, [true, false]);
}

#[test]
fn torn_tail_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let rt = rt();
    let spool = Spool::open(dir.path(), Options::default()).unwrap();
    let e = envelope(&spool, 1);
    rt.block_on(spool.store(&e, b"kept")).unwrap();
    drop(spool);
    // A crash mid-write leaves a partial record at the end of the segment.
    let seg = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().path()).max().unwrap();
    let mut data = std::fs::read(&seg).unwrap();
    let whole = data.len();
    let partial = record::encode_change(&Change::Done { id: e.id.clone() });
    data.extend_from_slice(&partial[..partial.len() / 2]);
    std::fs::write(&seg, &data).unwrap();
    let (_spool, pending) = open(dir.path(), &rt);
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].envelope.id, e.id);
    assert!(whole > 0);
}

#[test]
fn concurrent_stores_share_commits() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let spool = Spool::open(dir.path(), Options::default()).unwrap();
    let ids = rt.block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..200 {
            let spool = spool.clone();
            tasks.push(tokio::spawn(async move {
                let e = envelope(&spool, 1);
                spool.store(&e, b"x").await.unwrap();
                e.id
            }));
        }
        let mut ids = Vec::new();
        for t in tasks {
            ids.push(t.await.unwrap());
        }
        ids
    });
    drop(spool);
    let found = scan(dir.path()).unwrap();
    assert_eq!(found.len(), 200);
    let mut sorted = ids.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 200, "ids are unique");
}

/// Records written before the fields were typed (plain strings) still read.
#[test]
fn older_records_still_read() {
    let old = r#"{"id":"0001","arrival":1,"sender":"a@x.test","size":5,"ret":"HDRS","envid":null,
        "recipients":[
          {"address":"b@y.test","local":false,"original":"b@y.test","orcpt":null,"notify":"SUCCESS,FAILURE",
           "state":{"state":"deferred","attempts":2,"next_attempt":9,"reason":"4.4.1 y.test [192.0.2.1]: cannot connect"}},
          {"address":"c@localhost","local":true,"original":"c@localhost","orcpt":null,"notify":null,
           "state":{"state":"delivered","at":3,"reply":"delivered to maildir as 1.M2.tern"}}]}"#;
    let e: Envelope = serde_json::from_str(old).unwrap();
    assert_eq!(e.ret, Some(Ret::Headers));
    let notify = e.recipients[0].notify.unwrap();
    assert!(notify.success && notify.failure && !notify.delay && !notify.never);
    let RcptState::Deferred { detail, attempts: 2, .. } = &e.recipients[0].state else { panic!("{e:?}") };
    assert_eq!(*detail, Detail::new((4, 4, 1), "y.test [192.0.2.1]: cannot connect"));
    let RcptState::Delivered { detail, .. } = &e.recipients[1].state else { panic!("{e:?}") };
    assert_eq!(detail.text, "delivered to maildir as 1.M2.tern");
    // And the typed form writes the wire words.
    let json = serde_json::to_string(&e).unwrap();
    assert!(json.contains(r#""ret":"HDRS""#) && json.contains(r#""notify":"SUCCESS,FAILURE""#), "{json}");
}
