//! The etcd backend (v3 API over gRPC).
//!
//! Every request is bounded ([`REQUEST_TIMEOUT`]); transport failures become
//! [`StoreError::Unavailable`]. HTTP/2 keep-alive pings on open streams make a dead server break
//! a watch within [`KEEP_ALIVE_INTERVAL`] + [`KEEP_ALIVE_TIMEOUT`]; a killed server breaks it at
//! once. The channel connects lazily: [`EtcdStore::connect`] succeeds while etcd is down.
//!
//! With several endpoints, a member that refuses connections (dead) is taken out of the
//! client's balance within [`PROBE_EVERY`] and put back once it accepts them again (the
//! client's balancer would otherwise keep choosing it: it fails at once, so it looks idle).
//! A request that failed before any member acted on it (no connection, or a member without a
//! leader during an election) is sent again for up to [`RETRY_FOR`]; a read, after any
//! transport failure.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, PutOptions, Txn, TxnOp,
    TxnOpResponse, WatchOptions, WatchResponse,
};

use crate::{
    prefix_end, Cas, KeyValue, LeaseId, Listing, Page, Revision, Store, StoreError, StoreStatus,
    WatchEvent, WatchStream, DEFAULT_PAGE,
};

/// Time to establish a TCP connection to one endpoint.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Time for one request (or a watch's creation) to be answered.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP/2 ping interval while streams are open. etcd's default `--grpc-keepalive-min-time`
/// is 5 s; pinging more often gets the connection closed with `too_many_pings`.
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(5);
/// Time to wait for a ping's answer before the connection counts as dead.
pub const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a request that no member acted on is tried again (an election takes a second or
/// two after the leader's death).
pub const RETRY_FOR: Duration = Duration::from_secs(4);
/// The pause between two tries.
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// How often each endpoint is probed (a TCP connect) when there are several.
pub const PROBE_EVERY: Duration = Duration::from_millis(200);
/// Largest response accepted. Listings come in pages ([`DEFAULT_PAGE`] keys), so only keys
/// with huge values come near it; etcd's own limit on a request (`--max-request-bytes`,
/// 1.5 MiB by default) bounds what one write can hold.
const MAX_MESSAGE: usize = 64 << 20;

/// One request of a page.
struct Window {
    kvs: Vec<KeyValue>,
    /// Keys in the window, also those not returned.
    count: usize,
    more: bool,
    /// The revision read at.
    revision: Revision,
}

/// A store backed by an etcd cluster. Cloning shares the connection.
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    /// For the next page of a listing: the prefix and how many bytes of the last key the
    /// window that filled the last page kept.
    depth_hint: Arc<Mutex<Option<(String, usize)>>>,
    /// Ends the endpoint prober when the last clone goes.
    _prober: Option<Arc<Prober>>,
}

/// The task that keeps dead members out of the client's balance; aborted when dropped.
struct Prober(tokio::task::AbortHandle);

impl Drop for Prober {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl EtcdStore {
    /// A client for `endpoints` (e.g. `http://127.0.0.1:2379`); connects on first use.
    pub async fn connect(endpoints: &[String]) -> Result<EtcdStore, StoreError> {
        let options = ConnectOptions::new()
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_timeout(REQUEST_TIMEOUT)
            .with_keep_alive(KEEP_ALIVE_INTERVAL, KEEP_ALIVE_TIMEOUT)
            .with_keep_alive_while_idle(false)
            .with_require_leader(true);
        let client = bounded(Client::connect(endpoints, Some(options)))
            .await
            .map_err(|e| match e {
                StoreError::Rejected(reason) => {
                    StoreError::BadUrl(format!("{}: {reason}", endpoints.join(",")))
                }
                other => other,
            })?;
        let prober = (endpoints.len() > 1).then(|| {
            let task = tokio::spawn(probe(client.clone(), endpoints.to_vec()));
            Arc::new(Prober(task.abort_handle()))
        });
        Ok(EtcdStore {
            client,
            depth_hint: Arc::default(),
            _prober: prober,
        })
    }

    fn kv(&self) -> etcd_client::KvClient {
        self.client
            .kv_client()
            .max_decoding_message_size(MAX_MESSAGE)
    }

    /// Up to `limit` keys of [start, end) at `revision` (the current one when None); fewer
    /// when that many are over the message limit.
    async fn window(
        &self,
        start: &[u8],
        end: &[u8],
        limit: usize,
        revision: Option<Revision>,
    ) -> Result<Window, StoreError> {
        let mut limit = i64::try_from(limit.max(1)).unwrap_or(i64::MAX);
        let mut serializable = true;
        let mut response = loop {
            let mut options = GetOptions::new().with_range(end).with_limit(limit);
            if let Some(revision) = revision {
                // A read at a revision already known to be committed needs no consensus round
                // (a member that has not applied it yet answers "future revision": retried
                // below as a linearizable read).
                options = options.with_revision(revision);
                if serializable {
                    options = options.with_serializable();
                }
            }
            let answer = retried(true, || {
                let (mut kv, options) = (self.kv(), options.clone());
                async move { kv.get(start, Some(options)).await }
            })
            .await;
            match answer {
                Ok(response) => break response,
                // Keys with big values: a page of that many is over the message limit. Fewer.
                Err(StoreError::Rejected(m))
                    if m.contains("message length too large") && limit > 1 =>
                {
                    limit /= 2;
                    tracing::debug!(limit, "etcd page over the message limit: fewer keys");
                }
                Err(StoreError::Rejected(m)) if m.contains("future revision") && serializable => {
                    serializable = false;
                }
                // etcd: "mvcc: required revision has been compacted".
                Err(StoreError::Rejected(m)) if m.contains("compacted") => {
                    if let Some(at) = revision {
                        return Err(StoreError::Compacted {
                            compact_revision: at + 1,
                        });
                    }
                    return Err(StoreError::Rejected(m));
                }
                Err(e) => return Err(e),
            }
        };
        // The header tells the current revision, also for a read at an older one.
        let revision = match revision {
            Some(at) => at,
            None => header_revision(response.header())?,
        };
        let more = response.more();
        let count = usize::try_from(response.count()).unwrap_or(0);
        let kvs = response
            .take_kvs()
            .into_iter()
            .map(convert)
            .collect::<Result<_, _>>()?;
        Ok(Window {
            kvs,
            count,
            more,
            revision,
        })
    }

    /// Notes the depth of the window that filled a page of `prefix`: the next page starts one
    /// byte deeper. A window that held many times what the page wanted (`wide`: it spanned all
    /// the keys of a part, or of one byte value) only ever makes the hint deeper, by one more:
    /// parts listed side by side each start with such a window, and a hint set back by each
    /// of them would have the pages after them span their whole part again.
    fn hint_depth(&self, prefix: &str, depth: usize, wide: bool) {
        let mut hint = self
            .depth_hint
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let depth = match hint.as_ref() {
            Some((p, known)) if wide && p == prefix => (*known).max(depth + 1),
            _ if wide => depth + 1,
            _ => depth,
        };
        *hint = Some((prefix.to_owned(), depth));
    }

    fn lease(&self) -> etcd_client::LeaseClient {
        self.client.lease_client()
    }
}

/// Runs one request with [`REQUEST_TIMEOUT`] and maps its error.
async fn bounded<T>(
    request: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(REQUEST_TIMEOUT, request).await {
        Ok(answer) => answer.map_err(map_error),
        Err(_) => Err(StoreError::Unavailable(format!(
            "etcd did not answer within {REQUEST_TIMEOUT:?}"
        ))),
    }
}

/// Runs the request `make` makes until an answer, sending it again for up to [`RETRY_FOR`] while
/// it fails in a way that shows no member acted on it (every failure of a read: `idempotent`).
async fn retried<T, Fut>(idempotent: bool, mut make: impl FnMut() -> Fut) -> Result<T, StoreError>
where
    Fut: Future<Output = Result<T, etcd_client::Error>>,
{
    let deadline = Instant::now() + RETRY_FOR;
    loop {
        match bounded(make()).await {
            Err(StoreError::Unavailable(m))
                if (idempotent || not_acted_on(&m)) && Instant::now() < deadline =>
            {
                tracing::debug!(error = %m, "etcd request failed; trying again");
                tokio::time::sleep(RETRY_PAUSE).await;
            }
            answer => return answer,
        }
    }
}

/// The failure came before any member took the request: no connection was made, or the member
/// has no leader (refused by `require_leader` before it is proposed).
fn not_acted_on(message: &str) -> bool {
    [
        "tcp connect error",
        "error trying to connect",
        "Connection refused",
        "no leader",
    ]
    .iter()
    .any(|m| message.contains(m))
}

/// Keeps the members that refuse connections out of `client`'s balance, and puts them back
/// once they accept them; never takes the last one out.
async fn probe(client: Client, endpoints: Vec<String>) {
    let mut out: Vec<bool> = vec![false; endpoints.len()];
    loop {
        tokio::time::sleep(PROBE_EVERY).await;
        let checks = endpoints.iter().map(|endpoint| async move {
            let addr = endpoint
                .trim_start_matches("http://")
                .trim_start_matches("https://")
                .trim_end_matches('/');
            let connect = tokio::net::TcpStream::connect(addr);
            matches!(tokio::time::timeout(PROBE_EVERY, connect).await, Ok(Ok(_)))
        });
        let up = futures::future::join_all(checks).await;
        for (i, endpoint) in endpoints.iter().enumerate() {
            let others_in = (0..endpoints.len()).any(|j| j != i && !out[j] && up[j]);
            if !up[i] && !out[i] && others_in {
                match client.remove_endpoint(endpoint).await {
                    Ok(()) => {
                        tracing::warn!(%endpoint, "etcd member refuses connections: out of the balance");
                        out[i] = true;
                    }
                    Err(e) => {
                        tracing::warn!(%endpoint, error = %e, "cannot take an etcd member out")
                    }
                }
            } else if up[i] && out[i] {
                match client.add_endpoint(endpoint).await {
                    Ok(()) => {
                        tracing::info!(%endpoint, "etcd member accepts connections again: back in the balance");
                        out[i] = false;
                    }
                    Err(e) => {
                        tracing::warn!(%endpoint, error = %e, "cannot put an etcd member back")
                    }
                }
            }
        }
    }
}

fn map_error(error: etcd_client::Error) -> StoreError {
    use etcd_client::Error as E;
    match error {
        E::GRpcStatus(status) => {
            // gRPC status codes: the ones that mean "this request is wrong", not "try later".
            const REJECTED: [i32; 9] = [3, 5, 6, 7, 9, 11, 12, 15, 16];
            const RESOURCE_EXHAUSTED: i32 = 8;
            let code = i32::from(status.code());
            let message = status.message().to_owned();
            // Resource exhausted is also etcd's "too many requests", which is worth retrying;
            // a request over the server's gRPC size limit is not.
            let too_large = code == RESOURCE_EXHAUSTED && message.contains("larger than max");
            if too_large || REJECTED.contains(&code) {
                StoreError::Rejected(message)
            } else {
                StoreError::Unavailable(message)
            }
        }
        E::Utf8Error(e) => StoreError::NotUtf8(e.to_string()),
        E::InvalidArgs(m) => StoreError::Rejected(m),
        E::InvalidUri(e) => StoreError::Rejected(e.to_string()),
        other => StoreError::Unavailable(other.to_string()),
    }
}

/// etcd answers a write bound to a missing lease with this message.
fn lease_missing(error: StoreError, lease: LeaseId) -> StoreError {
    match error {
        StoreError::Rejected(m) if m.contains("lease not found") => {
            StoreError::LeaseNotFound(lease)
        }
        other => other,
    }
}

fn convert(kv: etcd_client::KeyValue) -> Result<KeyValue, StoreError> {
    let (create_revision, mod_revision, lease) =
        (kv.create_revision(), kv.mod_revision(), kv.lease());
    let (key, value) = kv.into_key_value();
    let key = String::from_utf8(key).map_err(|e| StoreError::NotUtf8(e.to_string()))?;
    Ok(KeyValue {
        key,
        value,
        create_revision,
        mod_revision,
        lease: (lease != 0).then_some(lease),
    })
}

fn header_revision(header: Option<&etcd_client::ResponseHeader>) -> Result<Revision, StoreError> {
    header
        .map(|h| h.revision())
        .ok_or_else(|| StoreError::Unavailable("etcd answered without a header".into()))
}

fn put_options(lease: Option<LeaseId>) -> Option<PutOptions> {
    lease.map(|id| PutOptions::new().with_lease(id))
}

#[async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let mut response = retried(true, || {
            let mut kv = self.kv();
            async move { kv.get(key, None).await }
        })
        .await?;
        response
            .take_kvs()
            .into_iter()
            .next()
            .map(convert)
            .transpose()
    }

    async fn range(&self, prefix: &str) -> Result<Listing, StoreError> {
        // One answer for a million keys would be hundreds of MB (over any message limit).
        crate::list(self, prefix, DEFAULT_PAGE).await
    }

    async fn range_page(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
        revision: Option<Revision>,
    ) -> Result<Page, StoreError> {
        self.range_page_until(prefix, after, None, limit, revision)
            .await
    }

    async fn range_page_until(
        &self,
        prefix: &str,
        after: Option<&str>,
        until: Option<&str>,
        limit: usize,
        revision: Option<Revision>,
    ) -> Result<Page, StoreError> {
        let limit = limit.max(1);
        let mut full_end = prefix_end(prefix.as_bytes()).unwrap_or_else(|| vec![0]);
        // Keys up to `until`: the range ends at the smallest key after it.
        if let Some(until) = until {
            let until_end = [until.as_bytes(), b"\0"].concat();
            if full_end == [0] || until_end < full_end {
                full_end = until_end;
            }
        }
        if let Some(after) = after {
            if after.as_bytes() >= full_end.as_slice() && full_end != [0] {
                return Ok(Page {
                    kvs: Vec::new(),
                    revision: match revision {
                        Some(at) => at,
                        None => self.status().await?.revision,
                    },
                    more: false,
                });
            }
        }
        let after = match after {
            Some(after) if after.starts_with(prefix) => after.as_bytes(),
            // Before the prefix: from its first key. (Past it: nothing, in one request.)
            Some(after) if after < prefix => b"",
            Some(after) => after.as_bytes(),
            None => b"",
        };
        if !after.starts_with(prefix.as_bytes()) {
            let start = match after {
                b"" if prefix.is_empty() => vec![0],
                b"" => prefix.as_bytes().to_vec(),
                after => [after, b"\0"].concat(),
            };
            let window = self.window(&start, &full_end, limit, revision).await?;
            return Ok(Page {
                kvs: window.kvs,
                revision: window.revision,
                more: window.more,
            });
        }
        // etcd walks every key of a range's [start, end) to count them, however few it returns:
        // pages over the whole rest of the prefix would cost a million steps each at a million
        // keys. So a page reads windows of the key space: first the keys that share all of
        // `after` but its last byte (or as many bytes as the window that filled the last page
        // kept, plus one), then the next window of that size (the keys sharing the window's
        // end as a prefix), or the rest of its parent (one byte less) while the windows hold
        // far fewer keys than still wanted, or after a window found empty (a gap of byte
        // values no key uses). Every window at one revision.
        let mut start = [after, b"\0"].concat();
        let mut base = after.to_vec();
        let mut depth = after.len().saturating_sub(1);
        let hint = self
            .depth_hint
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .filter(|(p, _)| p == prefix)
            .map(|(_, depth)| *depth);
        if let Some(hint) = hint {
            depth = depth.min(hint + 1);
        }
        let mut at = revision;
        let mut kvs = Vec::new();
        let mut last_empty = false;
        loop {
            let mut whole = depth <= prefix.len();
            let end = match prefix_end(&base[..depth.min(base.len())]) {
                Some(end) if !whole => end,
                _ => full_end.clone(),
            };
            // A window reaching the end of the part is its last.
            let end = if end >= full_end && full_end != [0] {
                whole = true;
                full_end.clone()
            } else {
                end
            };
            let wanted = limit - kvs.len();
            let window = self.window(&start, &end, wanted, at).await?;
            let revision = *at.get_or_insert(window.revision);
            let held = window.count.max(window.kvs.len());
            if kvs.is_empty() {
                kvs = window.kvs;
            } else {
                kvs.extend(window.kvs);
            }
            // Full: keys remain in this window or after it.
            let full = window.more || kvs.len() >= limit;
            if full || whole {
                if full {
                    self.hint_depth(prefix, depth, held / 4 > wanted);
                }
                // Full, or the prefix is done.
                let more = window.more || (!whole && kvs.len() >= limit);
                return Ok(Page {
                    kvs,
                    revision,
                    more,
                });
            }
            start = end.clone();
            depth = end.len();
            base = end;
            let left = limit - kvs.len();
            if held == 0 && kvs.is_empty() {
                // Past the bytes in which keys rarely differ (the end of a uuid): faster.
                depth = depth.saturating_sub(2);
            } else if held == 0 && (until.is_some() || !last_empty) {
                // A gap (byte values no key uses): the rest of the parent. In a part (keys up
                // to `until`) after each empty window, its windows never reaching past the
                // part; over a whole prefix only after the first (a window past a second gap
                // could span most of it): then the next byte values, one window each.
                depth = depth.saturating_sub(1);
            } else if held > 0 && held.saturating_mul(16) < left {
                depth = depth.saturating_sub(1);
            }
            last_empty = held == 0;
            depth = depth.max(prefix.len());
        }
    }

    async fn status(&self) -> Result<StoreStatus, StoreError> {
        let response = retried(true, || {
            let mut kv = self.kv();
            async move {
                let options = GetOptions::new().with_count_only();
                kv.get(vec![0], Some(options)).await
            }
        })
        .await?;
        let header = response
            .header()
            .ok_or_else(|| StoreError::Unavailable("etcd answered without a header".into()))?;
        Ok(StoreStatus {
            id: format!("etcd:{:016x}", header.cluster_id()),
            member: format!("{:016x}", header.member_id()),
            revision: header.revision(),
        })
    }

    async fn put(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Result<Revision, StoreError> {
        let response = retried(false, || {
            let (mut kv, value) = (self.kv(), value.clone());
            async move { kv.put(key, value, put_options(lease)).await }
        })
        .await
        .map_err(|e| match lease {
            Some(id) => lease_missing(e, id),
            None => e,
        })?;
        header_revision(response.header())
    }

    async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        let response = retried(false, || {
            let mut kv = self.kv();
            async move { kv.delete(key, None).await }
        })
        .await?;
        Ok(response.deleted() > 0)
    }

    async fn compare_and_swap(
        &self,
        key: &str,
        expected: Revision,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Result<Cas, StoreError> {
        let compare = if expected == 0 {
            Compare::create_revision(key, CompareOp::Equal, 0)
        } else {
            Compare::mod_revision(key, CompareOp::Equal, expected)
        };
        let txn = Txn::new()
            .when([compare])
            .and_then([TxnOp::put(key, value, put_options(lease))])
            .or_else([TxnOp::get(key, None)]);
        let response = retried(false, || {
            let (mut kv, txn) = (self.kv(), txn.clone());
            async move { kv.txn(txn).await }
        })
        .await
        .map_err(|e| match lease {
            Some(id) => lease_missing(e, id),
            None => e,
        })?;
        let revision = header_revision(response.header())?;
        if response.succeeded() {
            return Ok(Cas::Swapped { revision });
        }
        let current = match response.op_responses().into_iter().next() {
            Some(TxnOpResponse::Get(mut get)) => get.take_kvs().into_iter().next(),
            _ => None,
        };
        Ok(Cas::Conflict {
            current: current.map(convert).transpose()?,
        })
    }

    async fn compare_and_delete(&self, key: &str, expected: Revision) -> Result<bool, StoreError> {
        let txn = Txn::new()
            .when([Compare::mod_revision(key, CompareOp::Equal, expected)])
            .and_then([TxnOp::delete(key, None)]);
        let response = retried(false, || {
            let (mut kv, txn) = (self.kv(), txn.clone());
            async move { kv.txn(txn).await }
        })
        .await?;
        if !response.succeeded() {
            return Ok(false);
        }
        Ok(response
            .op_responses()
            .into_iter()
            .any(|op| matches!(op, TxnOpResponse::Delete(d) if d.deleted() > 0)))
    }

    async fn watch(&self, prefix: &str, from: Revision) -> Result<WatchStream, StoreError> {
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(from.max(1));
        // Wait for etcd to confirm the watch, so that it is live when this returns.
        let watcher = retried(true, || {
            let mut watch_client = self
                .client
                .watch_client()
                .max_decoding_message_size(MAX_MESSAGE);
            let options = options.clone();
            async move {
                let mut watcher = watch_client.watch(prefix, Some(options)).await?;
                let first = watcher.message().await?;
                Ok::<_, etcd_client::Error>((watcher, first))
            }
        })
        .await?;
        let (stream, first) = watcher;
        let mut state = EtcdWatch {
            stream: Some(stream),
            pending: VecDeque::new(),
        };
        match first {
            Some(response) => state.take(response),
            None => state.fail(StoreError::Unavailable("etcd closed the watch".into())),
        }
        Ok(Box::pin(futures::stream::unfold(state, EtcdWatch::next)))
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        let seconds = i64::try_from(ttl.as_millis().div_ceil(1000))
            .unwrap_or(i64::MAX)
            .max(1);
        // Granted twice at worst: the extra lease holds nothing and expires.
        let response = retried(true, || {
            let mut lease = self.lease();
            async move { lease.grant(seconds, None).await }
        })
        .await?;
        if !response.error().is_empty() {
            return Err(StoreError::Rejected(response.error().to_owned()));
        }
        Ok(response.id())
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<(), StoreError> {
        // One round trip; the client answers `LeaseKeepAliveError` when etcd says TTL 0.
        let alive = retried(true, || {
            let mut client = self.lease();
            async move {
                match client.keep_alive(lease).await {
                    Ok(_) => Ok(true),
                    Err(etcd_client::Error::LeaseKeepAliveError(_)) => Ok(false),
                    Err(e) => Err(e),
                }
            }
        })
        .await
        .map_err(|e| lease_missing(e, lease))?;
        if alive {
            Ok(())
        } else {
            Err(StoreError::LeaseNotFound(lease))
        }
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError> {
        retried(true, || {
            let mut client = self.lease();
            async move { client.revoke(lease).await }
        })
        .await
        .map_err(|e| lease_missing(e, lease))?;
        Ok(())
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        let compacted = retried(true, || {
            let mut kv = self.kv();
            async move { kv.compact(revision, None).await }
        })
        .await;
        match compacted {
            Ok(_) => Ok(()),
            Err(StoreError::Rejected(m)) if m.contains("compacted") => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// A watch's state: the gRPC stream (None once ended) and the events not yet handed out.
struct EtcdWatch {
    stream: Option<etcd_client::WatchStream>,
    pending: VecDeque<Result<WatchEvent, StoreError>>,
}

impl EtcdWatch {
    /// Queues the events of one response, or the error that ends the watch.
    fn take(&mut self, response: WatchResponse) {
        if response.compact_revision() != 0 {
            let compact_revision = response.compact_revision();
            return self.fail(StoreError::Compacted { compact_revision });
        }
        if response.canceled() {
            let reason = format!("etcd cancelled the watch: {}", response.cancel_reason());
            return self.fail(StoreError::Unavailable(reason));
        }
        for event in response.events() {
            let Some(kv) = event.kv() else {
                continue;
            };
            let item = match event.event_type() {
                EventType::Put => convert(kv.clone()).map(WatchEvent::Put),
                EventType::Delete => match kv.key_str() {
                    Ok(key) => Ok(WatchEvent::Delete {
                        key: key.to_owned(),
                        mod_revision: kv.mod_revision(),
                    }),
                    Err(e) => Err(StoreError::NotUtf8(e.to_string())),
                },
            };
            let failed = item.is_err();
            self.pending.push_back(item);
            if failed {
                self.stream = None;
                return;
            }
        }
    }

    /// Ends the watch with `error` after the events already queued.
    fn fail(&mut self, error: StoreError) {
        self.stream = None;
        self.pending.push_back(Err(error));
    }

    async fn next(mut self) -> Option<(Result<WatchEvent, StoreError>, EtcdWatch)> {
        loop {
            if let Some(item) = self.pending.pop_front() {
                return Some((item, self));
            }
            let stream = self.stream.as_mut()?;
            match stream.message().await {
                Ok(Some(response)) => self.take(response),
                Ok(None) => self.fail(StoreError::Unavailable("etcd closed the watch".into())),
                Err(e) => self.fail(StoreError::Unavailable(format!(
                    "watch broke: {}",
                    map_error(e)
                ))),
            }
        }
    }
}
