//! DNSSEC-aware lookups for DANE (RFC 7672 §2.1), configured by `[dns] dnssec`:
//! `validate` checks signatures here (hickory's validator, from the root's trust
//! anchor or `[dns] trust_anchor`); `trust-resolver` asks the configured nameserver,
//! a validating resolver on loopback, with the DO and AD bits and believes its AD bit
//! (as Postfix's `smtp_dns_support_level = dane` does).
//!
//! Every answer says whether it is secure. Bogus and indeterminate answers are errors
//! the caller must not downgrade past. Answers, denials included, are cached for
//! their TTL, so a destination costs no lookups while cached.

use crate::config::{self, Dnssec};
use hickory_resolver::config::ResolverOpts;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError, NoRecords};
use hickory_resolver::proto::dnssec::{Proof, TrustAnchors};
use hickory_resolver::proto::op::{Edns, Message, Query, ResponseCode};
use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};
use hickory_resolver::{Resolver, TokioResolver};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::timeout;

/// The longest an answer is kept, whatever its TTL.
const MAX_TTL: u32 = 86_400;
/// The TTL of a denial that carries no SOA.
const DEFAULT_NEGATIVE_TTL: u32 = 300;
/// Most answers kept; the cache is emptied of expired ones, then cleared, past it.
const MAX_ENTRIES: usize = 10_000;

/// An answer and whether DNSSEC vouches for it. No records means the name or the
/// type does not exist (NXDOMAIN or NODATA); `secure` then says the denial is proven.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub records: Vec<RData>,
    pub secure: bool,
}

/// A lookup DNSSEC could not settle: RFC 7672 §2.1.1 forbids treating it as insecure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecureError {
    /// Signatures failed validation.
    Bogus(String),
    /// No usable answer: timeout, SERVFAIL (a validating resolver's answer to bogus
    /// data too), network trouble.
    Indeterminate(String),
}

impl std::fmt::Display for SecureError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecureError::Bogus(e) => write!(f, "DNSSEC validation failed: {e}"),
            SecureError::Indeterminate(e) => write!(f, "no answer: {e}"),
        }
    }
}

enum Backend {
    /// hickory validates; the resolver is made at first use, once the keys of DS trust
    /// anchors are known.
    Validate(Box<Validator>),
    /// A validating resolver on loopback: its AD bit is believed.
    TrustResolver { servers: Vec<SocketAddr>, timeout: Duration },
}

/// DNSSEC-aware lookups, with their cache.
pub struct SecureDns {
    backend: Backend,
    cache: Mutex<HashMap<(String, RecordType), (Answer, Instant)>>,
}

impl std::fmt::Debug for SecureDns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecureDns")
    }
}

/// A DS record of a trust anchor file: the key it names is trusted once fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
struct DsAnchor {
    name: Name,
    key_tag: u16,
    algorithm: u8,
    digest_type: u8,
    digest: Vec<u8>,
}

/// The DNSKEY and DS records of a trust anchor file (zone-file format, one record a
/// line, `;` comments).
fn anchors(path: &std::path::Path) -> Result<(TrustAnchors, Vec<DsAnchor>), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("[dns] trust_anchor {}: {e}", path.display()))?;
    let bad = |what: String| format!("[dns] trust_anchor {}: {what}", path.display());
    let (mut keys, mut ds) = (String::new(), Vec::new());
    for line in text.lines() {
        let record = line.split(';').next().unwrap_or_default();
        let fields: Vec<&str> = record.split_whitespace().collect();
        match fields.iter().position(|f| f.eq_ignore_ascii_case("DS")) {
            Some(at) if at > 0 && fields.len() >= at + 5 => {
                let name = Name::from_ascii(fields[0]).map_err(|e| bad(format!("{}: {e}", fields[0])))?;
                let number =
                    |i: usize| fields[at + i].parse::<u16>().map_err(|_| bad(format!("bad DS record: {line}")));
                let hex: String = fields[at + 4..].concat();
                let digest = (0..hex.len())
                    .step_by(2)
                    .map(|i| hex.get(i..i + 2).and_then(|b| u8::from_str_radix(b, 16).ok()))
                    .collect::<Option<Vec<u8>>>()
                    .filter(|d| !d.is_empty())
                    .ok_or_else(|| bad(format!("bad DS digest: {line}")))?;
                let (key_tag, algorithm, digest_type) = (number(1)?, number(2)?, number(3)?);
                let (Ok(algorithm), Ok(digest_type)) = (u8::try_from(algorithm), u8::try_from(digest_type)) else {
                    return Err(bad(format!("bad DS record: {line}")));
                };
                ds.push(DsAnchor { name, key_tag, algorithm, digest_type, digest });
            }
            Some(_) => return Err(bad(format!("bad DS record: {line}"))),
            None => {
                keys.push_str(line);
                keys.push('\n');
            }
        }
    }
    let anchors: TrustAnchors =
        keys.parse().map_err(|e| bad(format!("{e} (expected DNSKEY or DS records in zone-file format)")))?;
    if ds.is_empty() && !keys.lines().any(|l| l.contains("DNSKEY")) {
        return Err(bad("no DNSKEY or DS record found".into()));
    }
    Ok((anchors, ds))
}

/// hickory's validator, made at first use: a DS trust anchor needs its zone's keys
/// fetched first (they are trusted when their digest matches, RFC 4034 §5.1.4).
struct Validator {
    config: config::Dns,
    anchors: TrustAnchors,
    ds: Vec<DsAnchor>,
    resolver: tokio::sync::OnceCell<TokioResolver>,
}

impl Validator {
    async fn resolver(&self) -> Result<&TokioResolver, SecureError> {
        self.resolver
            .get_or_try_init(|| async {
                let mut anchors = self.anchors.clone();
                if !self.ds.is_empty() {
                    let plain = crate::dns::Dns::new(&self.config).map_err(SecureError::Indeterminate)?;
                    for ds in &self.ds {
                        trust_ds_keys(&plain, ds, &mut anchors).await?;
                    }
                }
                validating(&self.config, anchors).map_err(SecureError::Indeterminate)
            })
            .await
    }
}

/// Adds the DNSKEYs of `ds.name` whose digest `ds` gives to `anchors`.
async fn trust_ds_keys(plain: &crate::dns::Dns, ds: &DsAnchor, anchors: &mut TrustAnchors) -> Result<(), SecureError> {
    use hickory_resolver::proto::dnssec::{DigestType, Verifier, rdata::DNSSECRData};
    let zone = ds.name.to_ascii();
    let keys = plain
        .records(&zone, RecordType::DNSKEY)
        .await
        .map_err(|e| SecureError::Indeterminate(format!("DNSKEY of the trust anchor {zone}: {e:?}")))?;
    let mut found = false;
    for key in keys.iter().filter_map(|r| match r {
        RData::DNSSEC(DNSSECRData::DNSKEY(key)) => Some(key),
        _ => None,
    }) {
        let matches = key.calculate_key_tag().is_ok_and(|t| t == ds.key_tag)
            && u8::from(key.algorithm()) == ds.algorithm
            && key
                .to_digest(&ds.name, DigestType::from(ds.digest_type))
                .is_ok_and(|d| d.as_ref() == ds.digest.as_slice());
        if matches {
            anchors.insert_with_name(key.public_key(), (&ds.name).into());
            found = true;
        }
    }
    if found { Ok(()) } else { Err(SecureError::Bogus(format!("no DNSKEY of {zone} matches the DS trust anchor"))) }
}

impl SecureDns {
    /// The lookups `[dns] dnssec` asks for; `None` when it is off.
    pub fn new(config: &config::Dns) -> Result<Option<Arc<SecureDns>>, String> {
        let backend = match config.dnssec {
            Dnssec::Off => return Ok(None),
            Dnssec::TrustResolver => {
                Backend::TrustResolver { servers: config.nameservers.clone(), timeout: config.timeout }
            }
            Dnssec::Validate => {
                let (anchors, ds) = match &config.trust_anchor {
                    Some(path) => anchors(path)?,
                    None => (TrustAnchors::default(), Vec::new()),
                };
                let resolver = tokio::sync::OnceCell::new();
                Backend::Validate(Box::new(Validator { config: config.clone(), anchors, ds, resolver }))
            }
        };
        Ok(Some(Arc::new(SecureDns { backend, cache: Mutex::new(HashMap::new()) })))
    }

    /// The records of one type at `name` (CNAMEs followed), and whether they are
    /// secure; cached for their TTL.
    pub async fn lookup(&self, name: &str, kind: RecordType) -> Result<Answer, SecureError> {
        let fqdn =
            if name.ends_with('.') { name.to_ascii_lowercase() } else { format!("{}.", name.to_ascii_lowercase()) };
        let key = (fqdn.clone(), kind);
        let now = Instant::now();
        if let Some((answer, _)) = self.cache.lock().unwrap().get(&key).filter(|(_, until)| *until > now) {
            return Ok(answer.clone());
        }
        let name = Name::from_ascii(&fqdn).map_err(|e| SecureError::Indeterminate(format!("bad name {fqdn}: {e}")))?;
        let (answer, ttl) = match &self.backend {
            Backend::Validate(validator) => validated(validator.resolver().await?, name, kind).await?,
            Backend::TrustResolver { servers, timeout } => trusted(servers, *timeout, name, kind).await?,
        };
        let mut cache = self.cache.lock().unwrap();
        if cache.len() >= MAX_ENTRIES {
            cache.retain(|_, (_, until)| *until > now);
            if cache.len() >= MAX_ENTRIES {
                cache.clear();
            }
        }
        cache.insert(key, (answer.clone(), now + Duration::from_secs(ttl.min(MAX_TTL).into())));
        Ok(answer)
    }
}

/// A resolver validating from `anchors`.
fn validating(config: &config::Dns, anchors: TrustAnchors) -> Result<TokioResolver, String> {
    let mut options = ResolverOpts::default();
    options.timeout = config.timeout;
    options.attempts = 2;
    options.validate = true;
    let provider = TokioRuntimeProvider::default();
    let builder = if config.nameservers.is_empty() {
        Resolver::builder(provider).map_err(|e| format!("cannot read /etc/resolv.conf: {e}"))?
    } else {
        Resolver::builder_with_config(crate::dns::name_servers(&config.nameservers), provider)
    };
    builder
        .with_options(options)
        .with_trust_anchor(Arc::new(anchors))
        .build()
        .map_err(|e| format!("cannot start the validating resolver: {e}"))
}

/// A lookup through hickory's validator, and the TTL to keep it.
async fn validated(resolver: &TokioResolver, name: Name, kind: RecordType) -> Result<(Answer, u32), SecureError> {
    match resolver.lookup(name, kind).await {
        Ok(lookup) => {
            let wanted: Vec<&Record> = lookup.answers().iter().filter(|r| r.record_type() == kind).collect();
            if wanted.iter().any(|r| r.proof == Proof::Bogus) {
                return Err(SecureError::Bogus(format!("bogus {kind} records")));
            }
            // The CNAMEs on the way count too (RFC 7672 §2.2.1).
            let secure = !wanted.is_empty() && lookup.answers().iter().all(|r| r.proof == Proof::Secure);
            let ttl = wanted.iter().map(|r| r.ttl).min().unwrap_or(DEFAULT_NEGATIVE_TTL);
            Ok((Answer { records: wanted.into_iter().map(|r| r.data.clone()).collect(), secure }, ttl))
        }
        Err(NetError::Dns(DnsError::NoRecordsFound(no))) => Ok((denial(&no), negative_ttl(&no))),
        Err(NetError::Dns(DnsError::Nsec { proof: Proof::Bogus, .. })) => {
            Err(SecureError::Bogus("the denial of existence does not validate".into()))
        }
        // An unproven denial in a zone without a chain of trust: insecure.
        Err(NetError::Dns(DnsError::Nsec { .. })) => Ok((Answer { records: Vec::new(), secure: false }, 60)),
        Err(NetError::Dns(DnsError::DnssecBogus)) => Err(SecureError::Bogus("bogus answer".into())),
        Err(e) => Err(SecureError::Indeterminate(e.to_string())),
    }
}

/// A validated NXDOMAIN or NODATA: secure when its NSEC or NSEC3 records (or the
/// SOA) validated.
fn denial(no: &NoRecords) -> Answer {
    let secure = no.authorities.as_ref().is_some_and(|records| {
        records.iter().any(|r| {
            r.proof == Proof::Secure
                && matches!(r.record_type(), RecordType::NSEC | RecordType::NSEC3 | RecordType::SOA)
        })
    });
    Answer { records: Vec::new(), secure }
}

/// RFC 2308 §5: the lesser of the SOA's TTL and its minimum field.
fn negative_ttl(no: &NoRecords) -> u32 {
    no.negative_ttl.or_else(|| no.soa.as_ref().map(|soa| soa.ttl.min(soa.data.minimum))).unwrap_or(DEFAULT_NEGATIVE_TTL)
}

/// A lookup through a validating resolver on loopback, believing its AD bit.
async fn trusted(
    servers: &[SocketAddr],
    wait: Duration,
    name: Name,
    kind: RecordType,
) -> Result<(Answer, u32), SecureError> {
    let mut last = String::from("no nameserver configured");
    for server in servers {
        for _ in 0..2 {
            match ask(*server, &name, kind, wait).await {
                Ok(reply) => return read_reply(reply, kind),
                Err(e) => last = format!("{server}: {e}"),
            }
        }
    }
    Err(SecureError::Indeterminate(last))
}

/// What a validating resolver's reply says: SERVFAIL is how it answers bogus data.
fn read_reply(reply: Message, kind: RecordType) -> Result<(Answer, u32), SecureError> {
    let secure = reply.metadata.authentic_data;
    match reply.metadata.response_code {
        ResponseCode::NoError | ResponseCode::NXDomain => {}
        ResponseCode::ServFail => {
            return Err(SecureError::Indeterminate("SERVFAIL (validation failure or no answer)".into()));
        }
        other => return Err(SecureError::Indeterminate(format!("answer {other}"))),
    }
    let wanted: Vec<&Record> = reply.answers.iter().filter(|r| r.record_type() == kind).collect();
    let ttl = match wanted.iter().map(|r| r.ttl).min() {
        Some(ttl) => ttl,
        None => reply
            .authorities
            .iter()
            .find_map(|r| match &r.data {
                RData::SOA(soa) => Some(r.ttl.min(soa.minimum)),
                _ => None,
            })
            .unwrap_or(DEFAULT_NEGATIVE_TTL),
    };
    Ok((Answer { records: wanted.into_iter().map(|r| r.data.clone()).collect(), secure }, ttl))
}

/// One question with DO and AD set (RFC 6840 §5.7, RFC 4035 §3.2.1), over UDP, and
/// over TCP when the answer was truncated.
async fn ask(server: SocketAddr, name: &Name, kind: RecordType, wait: Duration) -> Result<Message, String> {
    let mut query = Message::query();
    query.metadata.recursion_desired = true;
    query.metadata.authentic_data = true;
    query.add_query(Query::query(name.clone(), kind));
    let mut edns = Edns::new();
    edns.set_dnssec_ok(true);
    edns.set_max_payload(1232);
    query.set_edns(edns);
    let bytes = query.to_vec().map_err(|e| e.to_string())?;
    let id = query.metadata.id;
    let local: SocketAddr = if server.is_ipv4() { ([127, 0, 0, 1], 0).into() } else { ([0u16; 8], 0).into() };
    let socket = UdpSocket::bind(local).await.map_err(|e| e.to_string())?;
    socket.connect(server).await.map_err(|e| e.to_string())?;
    socket.send(&bytes).await.map_err(|e| e.to_string())?;
    let reply = timeout(wait, async {
        let mut buf = vec![0u8; 4096];
        loop {
            let n = socket.recv(&mut buf).await.map_err(|e| e.to_string())?;
            // Anything but the answer to this question is ignored.
            if let Ok(reply) = Message::from_vec(&buf[..n])
                && reply.metadata.id == id
                && reply.queries.first().is_some_and(|q| q.name() == name && q.query_type() == kind)
            {
                return Ok::<Message, String>(reply);
            }
        }
    })
    .await
    .map_err(|_| "timed out".to_string())??;
    if !reply.metadata.truncation {
        return Ok(reply);
    }
    timeout(wait, async {
        let mut tcp = TcpStream::connect(server).await.map_err(|e| e.to_string())?;
        let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&bytes);
        tcp.write_all(&framed).await.map_err(|e| e.to_string())?;
        let len = tcp.read_u16().await.map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; len.into()];
        tcp.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        let reply = Message::from_vec(&buf).map_err(|e| e.to_string())?;
        if reply.metadata.id != id {
            return Err("answer to another question".to_string());
        }
        Ok(reply)
    })
    .await
    .map_err(|_| "timed out over TCP".to_string())?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trust_anchor_file_holds_dnskey_or_ds_records() {
        let dir = std::env::temp_dir().join(format!("tern-anchor-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bad = dir.join("bad.key");
        std::fs::write(&bad, "example. 3600 IN A 192.0.2.1\n").unwrap();
        assert!(anchors(&bad).is_err());
        let ds = dir.join("ds.key");
        std::fs::write(&ds, "; the zone's key\nremote.test.\tIN\tDS\t27340 13 2 9064cc2d854e c4cdf43c\n").unwrap();
        let (_, found) = anchors(&ds).unwrap();
        let digest = vec![0x90, 0x64, 0xcc, 0x2d, 0x85, 0x4e, 0xc4, 0xcd, 0xf4, 0x3c];
        let name = Name::from_ascii("remote.test.").unwrap();
        assert_eq!(found, vec![DsAnchor { name, key_tag: 27340, algorithm: 13, digest_type: 2, digest }]);
        std::fs::write(&ds, "remote.test. IN DS 27340 13 2 xyz\n").unwrap();
        assert!(anchors(&ds).err().unwrap().contains("bad DS digest"));
        assert!(anchors(&dir.join("missing.key")).err().unwrap().contains("missing.key"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_ad_bit_decides_and_servfail_is_indeterminate() {
        let mut reply = Message::query();
        reply.metadata.response_code = ResponseCode::ServFail;
        assert!(matches!(read_reply(reply.clone(), RecordType::TLSA), Err(SecureError::Indeterminate(_))));
        reply.metadata.response_code = ResponseCode::NXDomain;
        reply.metadata.authentic_data = true;
        let (answer, ttl) = read_reply(reply.clone(), RecordType::TLSA).unwrap();
        assert_eq!((answer, ttl), (Answer { records: Vec::new(), secure: true }, DEFAULT_NEGATIVE_TTL));
        reply.metadata.authentic_data = false;
        assert!(!read_reply(reply, RecordType::TLSA).unwrap().0.secure);
    }

    /// A validating resolver on loopback that answers every question with one TLSA
    /// record (AD set, TTL 3600), counting the questions.
    async fn fake_resolver() -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
        use hickory_resolver::proto::op::OpCode;
        use hickory_resolver::proto::rr::rdata::TLSA;
        use hickory_resolver::proto::rr::rdata::tlsa::{CertUsage, Matching, Selector};
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let asked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = asked.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok((n, from)) = socket.recv_from(&mut buf).await {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let query = Message::from_vec(&buf[..n]).unwrap();
                let question = query.queries[0].clone();
                let mut reply = Message::response(query.metadata.id, OpCode::Query);
                reply.metadata.authentic_data = true;
                let tlsa = TLSA::new(CertUsage::DaneEe, Selector::Spki, Matching::Sha256, vec![7; 32]);
                reply.add_answer(Record::from_rdata(question.name().clone(), 3600, RData::TLSA(tlsa)));
                reply.add_query(question);
                socket.send_to(&reply.to_vec().unwrap(), from).await.unwrap();
            }
        });
        (addr, asked)
    }

    #[tokio::test]
    async fn a_trusted_answer_is_read_once_and_then_cached() {
        let (addr, asked) = fake_resolver().await;
        let backend = Backend::TrustResolver { servers: vec![addr], timeout: Duration::from_secs(5) };
        let dns = SecureDns { backend, cache: Mutex::new(HashMap::new()) };
        let first = dns.lookup("_25._tcp.mx.example", RecordType::TLSA).await.unwrap();
        assert!(first.secure);
        assert!(matches!(&first.records[..], [RData::TLSA(t)] if t.cert_data == vec![7; 32]));
        let again = dns.lookup("_25._tcp.MX.example.", RecordType::TLSA).await.unwrap();
        assert_eq!(again, first);
        assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 1, "the second lookup asked again");
    }
}
