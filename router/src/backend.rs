//! The live instances of a service and how one is chosen for a request.
//!
//! Choice is power-of-two-choices: two distinct random instances, the one with fewer requests
//! in flight wins. Leader routes use only the instance registered first (lowest create revision).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use flynn_store::Revision;

mod attempts;
pub use attempts::Attempts;

/// Connect attempts per request (the first one plus retries on other instances).
pub const MAX_ATTEMPTS: usize = 3;

/// How long an instance that refused a connection is avoided, doubling per failure in a row.
const EJECT_FIRST: Duration = Duration::from_millis(500);
const EJECT_MAX: Duration = Duration::from_secs(30);

/// One instance of a service.
#[derive(Debug)]
pub struct Backend {
    pub id: String,
    pub addr: SocketAddr,
    pub create_revision: Revision,
    in_flight: AtomicUsize,
    /// Connect failures in a row; 0 when healthy.
    failures: AtomicU32,
    /// Until when (ms since `EPOCH`) the instance is avoided after a failed connect.
    ejected_until_ms: AtomicU64,
}

impl Backend {
    pub fn new(id: String, addr: SocketAddr, create_revision: Revision) -> Backend {
        Backend {
            id,
            addr,
            create_revision,
            in_flight: AtomicUsize::new(0),
            failures: AtomicU32::new(0),
            ejected_until_ms: AtomicU64::new(0),
        }
    }

    /// A new backend, also listed by [`live`] for as long as anything holds it (a table
    /// snapshot or a request in flight on it).
    pub fn tracked(id: String, addr: SocketAddr, create_revision: Revision) -> Arc<Backend> {
        let backend = Arc::new(Backend::new(id, addr, create_revision));
        let mut all = LIVE.lock().unwrap_or_else(|e| e.into_inner());
        // Forget the dead ones whenever the list has doubled since the last sweep.
        if all.list.len() >= all.swept_at.max(64) * 2 {
            all.list.retain(|b| b.strong_count() > 0);
            all.swept_at = all.list.len();
        }
        all.list.push(Arc::downgrade(&backend));
        backend
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Passive health: a refused or timed-out connect, or a response that did not come within
    /// the upstream timeout, ejects the instance for a while (500 ms, doubling per failure in a
    /// row up to 30 s); it is tried again once that has passed.
    pub fn failed(&self) {
        self.failed_at(now_ms());
    }

    /// [`Backend::failed`] at `now` (ms on the backends' clock).
    pub fn failed_at(&self, now: u64) {
        let failures = self.failures.fetch_add(1, Ordering::Relaxed).min(16);
        let backoff = EJECT_FIRST.saturating_mul(1 << failures).min(EJECT_MAX);
        let until = now + backoff.as_millis() as u64;
        self.ejected_until_ms.store(until, Ordering::Relaxed);
    }

    /// A connect worked: the instance is healthy again.
    pub fn succeeded(&self) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
            self.ejected_until_ms.store(0, Ordering::Relaxed);
        }
    }

    pub fn is_ejected(&self) -> bool {
        self.is_ejected_at(now_ms())
    }

    /// [`Backend::is_ejected`] at `now` (ms on the backends' clock).
    pub fn is_ejected_at(&self, now: u64) -> bool {
        let until = self.ejected_until_ms.load(Ordering::Relaxed);
        until != 0 && now < until
    }
}

/// Every backend made by [`Backend::tracked`] (weakly held).
struct Live {
    list: Vec<std::sync::Weak<Backend>>,
    swept_at: usize,
}

static LIVE: std::sync::Mutex<Live> = std::sync::Mutex::new(Live {
    list: Vec::new(),
    swept_at: 0,
});

/// The tracked backends still alive, in the table or not: one that left the table lives on
/// while requests are in flight on it (what a deploy waits for before stopping its job).
pub fn live() -> Vec<Arc<Backend>> {
    let mut all = LIVE.lock().unwrap_or_else(|e| e.into_inner());
    all.list.retain(|b| b.strong_count() > 0);
    all.swept_at = all.list.len();
    all.list
        .iter()
        .filter_map(std::sync::Weak::upgrade)
        .collect()
}

/// Milliseconds on a monotonic clock shared by every backend (never 0).
pub fn now_ms() -> u64 {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// Counts a request in flight on a backend for as long as it lives.
#[derive(Debug)]
pub struct InFlight(Arc<Backend>);

impl InFlight {
    pub fn new(backend: Arc<Backend>) -> InFlight {
        backend.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(backend)
    }

    pub fn backend(&self) -> &Arc<Backend> {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The instances of one service, oldest registration first (the first is the leader).
#[derive(Debug, Default)]
pub struct Service {
    backends: Vec<Arc<Backend>>,
}

/// Which instances a request has already tried (indices into one [`Service`] snapshot).
#[derive(Debug, Default, Clone, Copy)]
pub struct Tried {
    indices: [usize; MAX_ATTEMPTS],
    len: usize,
}

impl Tried {
    pub fn count(&self) -> usize {
        self.len
    }

    fn contains(&self, index: usize) -> bool {
        self.indices[..self.len].contains(&index)
    }

    fn add(&mut self, index: usize) {
        if self.len < MAX_ATTEMPTS {
            self.indices[self.len] = index;
            self.len += 1;
        }
    }
}

impl Service {
    pub fn new(mut backends: Vec<Arc<Backend>>) -> Service {
        backends.sort_by(|a, b| (a.create_revision, &a.id).cmp(&(b.create_revision, &b.id)));
        Service { backends }
    }

    pub fn backends(&self) -> &[Arc<Backend>] {
        &self.backends
    }

    pub fn is_empty(&self) -> bool {
        self.backends.is_empty()
    }

    /// A copy with `backend` added, or replacing the one with the same id.
    pub fn with(&self, backend: Arc<Backend>) -> Service {
        let mut backends: Vec<_> = self
            .backends
            .iter()
            .filter(|b| b.id != backend.id)
            .cloned()
            .collect();
        backends.push(backend);
        Service::new(backends)
    }

    /// A copy without the backend of that id.
    pub fn without(&self, id: &str) -> Service {
        Service {
            backends: self
                .backends
                .iter()
                .filter(|b| b.id != id)
                .cloned()
                .collect(),
        }
    }

    /// The instance with that id (a sticky pin) at `now` (ms on the backends' clock),
    /// recorded as tried; None when it is gone, ejected or already tried for this request.
    /// [`Attempts`] is the caller.
    fn pick_by_id(&self, id: &str, tried: &mut Tried, now: u64) -> Option<Arc<Backend>> {
        let index = self.backends.iter().position(|b| b.id == id)?;
        if tried.contains(index) || self.backends[index].is_ejected_at(now) {
            return None;
        }
        tried.add(index);
        Some(self.backends[index].clone())
    }

    /// Chooses an instance not tried yet for this request at `now` (ms on the backends' clock)
    /// with the randomness of `random`, and records it as tried. [`Attempts`] is the caller.
    fn pick(
        &self,
        leader_only: bool,
        tried: &mut Tried,
        now: u64,
        random: &mut impl Random,
    ) -> Option<Arc<Backend>> {
        let candidates = if leader_only {
            self.backends.get(..1).unwrap_or(&[])
        } else {
            &self.backends[..]
        };
        // Every tried index came from `candidates` and appears once.
        let untried = candidates.len().saturating_sub(tried.count());
        let index = match untried {
            0 => return None,
            1 => (0..candidates.len()).find(|&i| !tried.contains(i))?,
            _ => {
                // Two distinct untried instances, healthy ones first; the less busy wins, and
                // an ejected one only when nothing healthy is left.
                let n = candidates.len();
                let healthy = |i: usize| !candidates[i].is_ejected_at(now);
                let a = random_untried(n, tried, None, healthy, random)
                    .or_else(|| random_untried(n, tried, None, |_| true, random))?;
                let b = random_untried(n, tried, Some(a), healthy, random)
                    .or_else(|| random_untried(n, tried, Some(a), |_| true, random))?;
                let score =
                    |i: usize| (candidates[i].is_ejected_at(now), candidates[i].in_flight());
                if score(b) < score(a) {
                    b
                } else {
                    a
                }
            }
        };
        tried.add(index);
        Some(candidates[index].clone())
    }
}

/// A random index in `0..len`, not tried, not `except`, that passes `keep` (probing forward
/// from a random start).
fn random_untried(
    len: usize,
    tried: &Tried,
    except: Option<usize>,
    keep: impl Fn(usize) -> bool,
    random: &mut impl Random,
) -> Option<usize> {
    let start = random.below(len);
    (0..len)
        .map(|step| (start + step) % len)
        .find(|&i| !tried.contains(i) && Some(i) != except && keep(i))
}

/// Where backend choice gets its randomness: the thread's generator in the router, a seeded
/// one in simulations.
pub trait Random {
    /// A number in `0..n` (`n > 0`).
    fn below(&mut self, n: usize) -> usize;
}

/// The calling thread's generator (fastrand's thread-local one).
pub struct ThreadRandom;

impl Random for ThreadRandom {
    fn below(&mut self, n: usize) -> usize {
        fastrand::usize(..n)
    }
}

impl Random for fastrand::Rng {
    fn below(&mut self, n: usize) -> usize {
        self.usize(..n)
    }
}

#[cfg(test)]
mod simulation;

#[cfg(test)]
mod tests {
    use super::*;

    /// A choice now, with the thread's randomness (as [`Attempts`] makes it in the router).
    fn pick(s: &Service, leader_only: bool, tried: &mut Tried) -> Option<Arc<Backend>> {
        s.pick(leader_only, tried, now_ms(), &mut ThreadRandom)
    }

    fn service(n: usize) -> Service {
        Service::new(
            (0..n)
                .map(|i| {
                    Arc::new(Backend::new(
                        format!("i{i}"),
                        SocketAddr::from(([127, 0, 0, 1], 1000 + i as u16)),
                        (n - i) as Revision,
                    ))
                })
                .collect(),
        )
    }

    #[test]
    fn leader_is_the_oldest_registration() {
        let s = service(3);
        let mut tried = Tried::default();
        let leader = pick(&s, true, &mut tried).unwrap();
        assert_eq!(leader.id, "i2");
        assert!(
            pick(&s, true, &mut tried).is_none(),
            "no second leader to retry on"
        );
    }

    #[test]
    fn retries_never_repeat_an_instance() {
        let s = service(3);
        for _ in 0..100 {
            let mut tried = Tried::default();
            let mut seen: Vec<String> = (0..3)
                .map(|_| pick(&s, false, &mut tried).unwrap().id.clone())
                .collect();
            seen.sort();
            seen.dedup();
            assert_eq!(seen.len(), 3);
            assert!(pick(&s, false, &mut tried).is_none());
        }
    }

    #[test]
    fn prefers_the_less_loaded_of_two() {
        let s = service(2);
        let busy = s.backends()[0].clone();
        let _load: Vec<_> = (0..5).map(|_| InFlight::new(busy.clone())).collect();
        for _ in 0..50 {
            let picked = pick(&s, false, &mut Tried::default()).unwrap();
            assert_eq!(picked.id, s.backends()[1].id);
        }
        drop(_load);
        assert_eq!(busy.in_flight(), 0);
    }

    #[test]
    fn spreads_load_over_idle_instances() {
        let s = service(4);
        let mut counts = std::collections::HashMap::new();
        for _ in 0..4000 {
            let b = pick(&s, false, &mut Tried::default()).unwrap();
            *counts.entry(b.id.clone()).or_insert(0) += 1;
        }
        assert_eq!(counts.len(), 4);
        assert!(counts.values().all(|&c| c > 600), "{counts:?}");
    }

    #[test]
    fn ejected_instances_are_avoided_until_nothing_else_is_left() {
        let s = service(3);
        s.backends()[0].failed();
        s.backends()[1].failed();
        for _ in 0..200 {
            let picked = pick(&s, false, &mut Tried::default()).unwrap();
            assert_eq!(picked.id, s.backends()[2].id);
        }
        // The retry after a failed connect still reaches the ejected ones.
        let mut tried = Tried::default();
        let ids: Vec<_> = (0..3)
            .map(|_| pick(&s, false, &mut tried).unwrap().id.clone())
            .collect();
        assert_eq!(ids[0], s.backends()[2].id);
        s.backends()[0].succeeded();
        assert!(!s.backends()[0].is_ejected());
        assert!(s.backends()[1].is_ejected());
    }

    #[test]
    fn empty_service_has_no_pick() {
        assert!(pick(&Service::default(), false, &mut Tried::default()).is_none());
    }
}
