//! The connect attempts of one request or connection, the same on every engine (the HTTP/1.1
//! fast path, pingora's proxy and TCP routes): take the next instance not tried yet (the sticky
//! pin first, then the P2C choice, or only the leader), connect with the short connect timeout,
//! and on a failure record it ([`Backend::failed`]: the instance is ejected for a while) and go
//! on, at most [`MAX_ATTEMPTS`] times; when none is left the answer is 503 (HTTP) or a closed
//! connection (TCP). Only connect failures are retried: what happens after the request was
//! sent is never replayed on another instance.
//!
//! Sans-io: the caller connects, and reports a failed connect with [`Backend::failed`];
//! [`Attempts`] only decides. [`Attempts::next_with`] takes the clock and the randomness, for
//! simulations (with [`Backend::failed_at`]).

use std::sync::Arc;

use super::{now_ms, Backend, Random, Service, ThreadRandom, Tried, MAX_ATTEMPTS};

/// Which instance a request tries next, and what became of the ones tried.
#[derive(Debug)]
pub struct Attempts {
    service: Arc<Service>,
    leader: bool,
    /// The instance a sticky cookie pins: tried first (once), unless leader-only.
    pinned: Option<String>,
    tried: Tried,
}

impl Attempts {
    /// Attempts over `service`'s instances: only its leader when `leader`, else P2C with
    /// `pinned` (a sticky route's instance id) first.
    pub fn new(service: Arc<Service>, leader: bool, pinned: Option<String>) -> Attempts {
        Attempts {
            service,
            leader,
            pinned,
            tried: Tried::default(),
        }
    }

    /// The instance the client's sticky cookie pins, if any (a leader route keeps it only to
    /// tell whether the cookie must change).
    pub fn pinned(&self) -> Option<&str> {
        self.pinned.as_deref()
    }

    /// How many instances may be tried in all: [`MAX_ATTEMPTS`], or fewer when the service
    /// has fewer (one for a leader route).
    fn limit(&self) -> usize {
        let instances = if self.leader {
            self.service.backends().len().min(1)
        } else {
            self.service.backends().len()
        };
        instances.min(MAX_ATTEMPTS)
    }

    /// Whether another instance may still be tried after the last one failed to connect.
    pub fn more(&self) -> bool {
        self.tried.count() < self.limit()
    }

    /// [`Attempts::next`] at `now` (ms on the backends' clock) with `random`'s choices.
    pub fn next_with(&mut self, now: u64, random: &mut impl Random) -> Option<Arc<Backend>> {
        if !self.more() {
            return None;
        }
        let pinned = match &self.pinned {
            Some(id) if !self.leader => self.service.pick_by_id(id, &mut self.tried, now),
            _ => None,
        };
        pinned.or_else(|| self.service.pick(self.leader, &mut self.tried, now, random))
    }
}

/// The instances to connect to, in order (each recorded as tried when it is handed out);
/// the caller stops at the first that connects and reports the others [`Backend::failed`].
impl Iterator for Attempts {
    type Item = Arc<Backend>;

    fn next(&mut self) -> Option<Arc<Backend>> {
        self.next_with(now_ms(), &mut ThreadRandom)
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;

    fn service(n: usize) -> Arc<Service> {
        Arc::new(Service::new(
            (0..n)
                .map(|i| {
                    Arc::new(Backend::new(
                        format!("i{i}"),
                        SocketAddr::from(([127, 0, 0, 1], 2000 + i as u16)),
                        i as i64 + 1,
                    ))
                })
                .collect(),
        ))
    }

    /// Runs the attempts loop the engines run against instances that refuse when `down` says
    /// so: the instances tried, in order, and which one connected.
    fn run(attempts: &mut Attempts, down: &[&str], now: u64, seed: u64) -> (Vec<String>, bool) {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut tried = Vec::new();
        while let Some(backend) = attempts.next_with(now, &mut rng) {
            tried.push(backend.id.clone());
            if !down.contains(&backend.id.as_str()) {
                return (tried, true);
            }
            backend.failed_at(now);
        }
        (tried, false)
    }

    #[test]
    fn failed_connects_go_on_to_instances_not_tried_yet_then_stop() {
        for seed in 0..50 {
            let s = service(5);
            let mut attempts = Attempts::new(s.clone(), false, None);
            let (tried, connected) = run(&mut attempts, &["i0", "i1", "i2", "i3", "i4"], 1, seed);
            assert!(!connected);
            assert_eq!(tried.len(), MAX_ATTEMPTS, "seed {seed}");
            let mut distinct = tried.clone();
            distinct.sort();
            distinct.dedup();
            assert_eq!(
                distinct.len(),
                MAX_ATTEMPTS,
                "an instance tried twice: {tried:?}"
            );
            // Each failed one is ejected.
            for id in &tried {
                let b = s.backends().iter().find(|b| &b.id == id).expect("known");
                assert!(b.is_ejected_at(2));
            }
        }
    }

    #[test]
    fn fewer_instances_than_attempts_are_each_tried_once() {
        let mut attempts = Attempts::new(service(2), false, None);
        let (tried, connected) = run(&mut attempts, &["i0", "i1"], 1, 3);
        assert_eq!((tried.len(), connected), (2, false));
        assert!(!attempts.more());
        let mut empty = Attempts::new(Arc::new(Service::default()), false, None);
        assert!(!empty.more() && empty.next().is_none());
    }

    #[test]
    fn a_leader_route_tries_only_the_leader_whatever_the_pin() {
        let mut attempts = Attempts::new(service(3), true, Some("i2".into()));
        let (tried, connected) = run(&mut attempts, &["i0"], 1, 1);
        assert_eq!((tried, connected), (vec!["i0".to_owned()], false));
    }

    #[test]
    fn the_sticky_pin_is_tried_first_and_only_once() {
        for seed in 0..20 {
            let mut attempts = Attempts::new(service(4), false, Some("i3".into()));
            let (tried, connected) = run(&mut attempts, &["i3"], 1, seed);
            assert_eq!(tried[0], "i3");
            assert!(
                connected && tried.len() == 2 && tried[1] != "i3",
                "{tried:?}"
            );
        }
        // A pinned instance that is gone or ejected is skipped without costing an attempt.
        let s = service(3);
        s.backends()[1].failed_at(1);
        let mut attempts = Attempts::new(s, false, Some("i1".into()));
        let (tried, _) = run(&mut attempts, &[], 2, 5);
        assert_ne!(tried[0], "i1");
        let mut gone = Attempts::new(service(3), false, Some("nope".into()));
        assert!(run(&mut gone, &[], 1, 5).1);
    }

    #[test]
    fn a_healthy_instance_is_reached_whatever_the_choice() {
        for seed in 0..50 {
            let mut attempts = Attempts::new(service(3), false, None);
            let (tried, connected) = run(&mut attempts, &["i0", "i1"], 1, seed);
            assert!(connected, "seed {seed}: {tried:?}");
            assert_eq!(tried.last().map(String::as_str), Some("i2"));
        }
    }
}
