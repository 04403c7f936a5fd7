// flynn patch: the keep-alive pool of idle upstream connections, without a task per connection.
//
// pingora 0.9.1 wraps every released connection in an `Arc<tokio::sync::Mutex<_>>`, registers it
// in `pingora_pool::ConnectionPool` (two channels per connection) and spawns a task that watches it
// while it is idle; taking it back wakes that task to hand the lock over, then `getpeername(2)`
// checks the socket. That is four allocations, a task spawn, two extra task polls and a syscall
// on every proxied request. Here an idle connection is a plain entry in a map under one short
// lock: taking it checks, without blocking, that the backend has not closed it or sent data
// (as pingora does too), and that it has not been idle for longer than its peer's idle timeout.
// One sweeper task per pool drops closed and expired connections every second, so a backend that
// closes idle connections does not leave sockets behind.

use super::{test_reusable_stream, PoolCallback};
use crate::protocols::Stream;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// How often the sweeper looks for closed and expired idle connections.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

struct Idle {
    stream: Stream,
    since: Instant,
    timeout: Option<Duration>,
}

impl Idle {
    fn expired(&self, now: Instant) -> bool {
        self.timeout
            .is_some_and(|t| now.saturating_duration_since(self.since) >= t)
    }
}

#[derive(Default)]
struct Inner {
    /// Per reuse key, oldest first: connections are taken from the back (the most recently
    /// used, least likely to have been closed by the backend).
    by_key: HashMap<u64, Vec<Idle>>,
    count: usize,
}

impl Inner {
    fn pop(&mut self, key: u64) -> Option<Idle> {
        let list = self.by_key.get_mut(&key)?;
        let idle = list.pop()?;
        if list.is_empty() {
            self.by_key.remove(&key);
        }
        self.count -= 1;
        Some(idle)
    }

    /// Removes the connection that has been idle the longest, over all keys.
    fn evict_oldest(&mut self) -> Option<Idle> {
        let key = *self
            .by_key
            .iter()
            .filter_map(|(key, list)| list.first().map(|idle| (key, idle.since)))
            .min_by_key(|(_, since)| *since)?
            .0;
        let list = self.by_key.get_mut(&key)?;
        let idle = list.remove(0);
        if list.is_empty() {
            self.by_key.remove(&key);
        }
        self.count -= 1;
        Some(idle)
    }
}

pub(crate) struct IdlePool {
    inner: Mutex<Inner>,
    capacity: usize,
    sweeper_started: AtomicBool,
    unexpected_data_conn_count: Arc<AtomicU64>,
    callback: Option<PoolCallback>,
}

impl IdlePool {
    pub(crate) fn new(
        capacity: usize,
        unexpected_data_conn_count: Arc<AtomicU64>,
        callback: Option<PoolCallback>,
    ) -> Arc<Self> {
        Arc::new(IdlePool {
            inner: Mutex::new(Inner::default()),
            capacity,
            sweeper_started: AtomicBool::new(false),
            unexpected_data_conn_count,
            callback,
        })
    }

    /// Keeps `stream` for reuse under `key`; when the pool is full the connection idle the
    /// longest is closed to make room.
    pub(crate) fn put(self: &Arc<Self>, key: u64, stream: Stream, timeout: Option<Duration>) {
        if self.capacity == 0 {
            return;
        }
        self.start_sweeper();
        let idle = Idle {
            stream,
            since: Instant::now(),
            timeout,
        };
        let evicted = {
            let mut inner = self.inner.lock();
            let evicted = if inner.count >= self.capacity {
                inner.evict_oldest()
            } else {
                None
            };
            inner.by_key.entry(key).or_default().push(idle);
            inner.count += 1;
            evicted
        };
        // closed outside the lock
        if let Some(idle) = evicted {
            self.discard(idle);
        }
    }

    /// An idle connection for `key` that is still open, silent and within its idle timeout.
    pub(crate) fn take(&self, key: u64) -> Option<Stream> {
        loop {
            let mut idle = self.inner.lock().pop(key)?;
            if idle.expired(Instant::now()) {
                self.discard(idle);
                continue;
            }
            if test_reusable_stream(&mut idle.stream, &self.unexpected_data_conn_count) {
                return Some(idle.stream);
            }
            self.discard(idle);
        }
    }

    fn discard(&self, idle: Idle) {
        if let Some(callback) = &self.callback {
            callback(idle.since.elapsed());
        }
    }

    fn start_sweeper(self: &Arc<Self>) {
        if self.sweeper_started.swap(true, Ordering::Relaxed) {
            return;
        }
        let pool: Weak<Self> = Arc::downgrade(self);
        pingora_runtime::current_handle().spawn(async move {
            loop {
                tokio::time::sleep(SWEEP_EVERY).await;
                let Some(pool) = pool.upgrade() else {
                    return;
                };
                pool.sweep();
            }
        });
    }

    /// Drops the idle connections that expired or that the backend closed (or wrote to).
    fn sweep(&self) {
        let now = Instant::now();
        let mut dead = Vec::new();
        {
            let mut inner = self.inner.lock();
            let mut removed = 0;
            inner.by_key.retain(|_, list| {
                let mut i = 0;
                while i < list.len() {
                    let idle = &mut list[i];
                    if idle.expired(now)
                        || !test_reusable_stream(
                            &mut idle.stream,
                            &self.unexpected_data_conn_count,
                        )
                    {
                        dead.push(list.remove(i));
                        removed += 1;
                    } else {
                        i += 1;
                    }
                }
                !list.is_empty()
            });
            inner.count -= removed;
        }
        for idle in dead {
            self.discard(idle);
        }
    }
}
