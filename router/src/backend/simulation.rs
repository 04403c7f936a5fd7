//! A seeded simulation of backend choice: a simulated millisecond clock, a seeded generator,
//! requests arriving at a steady rate and held in flight for each instance's latency, and
//! instances that refuse connections for a while. It checks P2C and passive ejection as the
//! router uses them (pick, retry on another instance after a failed connect, `failed` /
//! `succeeded`), repeatably and without the wall clock.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;

use super::{Attempts, Backend, InFlight, Service, MAX_ATTEMPTS};

/// How one simulated instance behaves.
#[derive(Clone, Copy, Debug)]
struct Behaviour {
    /// Milliseconds a request stays in flight.
    latency: u64,
    /// Connects are refused in `down.0 .. down.1` (ms).
    down: (u64, u64),
}

const UP: (u64, u64) = (0, 0);

struct Simulation {
    now: u64,
    rng: fastrand::Rng,
    service: Arc<Service>,
    behaviour: Vec<Behaviour>,
    in_flight: VecDeque<(u64, InFlight)>,
    /// Requests served per instance.
    served: Vec<u64>,
    /// When each instance was tried and refused the connect.
    refused_at: Vec<Vec<u64>>,
    /// Requests that found no instance to connect to (what the router answers 503).
    unavailable: u64,
}

impl Simulation {
    fn new(seed: u64, behaviour: &[Behaviour]) -> Simulation {
        let backends = (0..behaviour.len())
            .map(|i| {
                Arc::new(Backend::new(
                    format!("i{i}"),
                    SocketAddr::from(([127, 0, 0, 1], 1000 + i as u16)),
                    i as i64 + 1,
                ))
            })
            .collect();
        Simulation {
            // The clock starts at 1: 0 means "never ejected" to a backend.
            now: 1,
            rng: fastrand::Rng::with_seed(seed),
            service: Arc::new(Service::new(backends)),
            behaviour: behaviour.to_vec(),
            in_flight: VecDeque::new(),
            served: vec![0; behaviour.len()],
            refused_at: vec![Vec::new(); behaviour.len()],
            unavailable: 0,
        }
    }

    fn index(&self, backend: &Backend) -> usize {
        self.service
            .backends()
            .iter()
            .position(|b| b.id == backend.id)
            .expect("a picked backend is in the service")
    }

    /// One request: pick, connect (or be refused and retry elsewhere), stay in flight, by the
    /// attempts rule the router's engines follow.
    fn request(&mut self) {
        let mut attempts = Attempts::new(self.service.clone(), false, None);
        while let Some(backend) = attempts.next_with(self.now, &mut self.rng) {
            let i = self.index(&backend);
            let b = self.behaviour[i];
            if (b.down.0..b.down.1).contains(&self.now) {
                backend.failed_at(self.now);
                self.refused_at[i].push(self.now);
                continue;
            }
            backend.succeeded();
            self.served[i] += 1;
            // Requests finish in the order they started only when latencies are equal; keep
            // the queue sorted by finish time.
            let done = self.now + b.latency;
            let at = self.in_flight.partition_point(|(t, _)| *t <= done);
            self.in_flight.insert(at, (done, InFlight::new(backend)));
            return;
        }
        self.unavailable += 1;
    }

    /// Runs `ms` milliseconds with `rate` requests arriving each.
    fn run(&mut self, ms: u64, rate: u32) {
        for _ in 0..ms {
            while self.in_flight.front().is_some_and(|(t, _)| *t <= self.now) {
                self.in_flight.pop_front();
            }
            for _ in 0..rate {
                self.request();
            }
            self.now += 1;
        }
    }

    fn total(&self) -> u64 {
        self.served.iter().sum()
    }
}

fn healthy(latency: u64) -> Behaviour {
    Behaviour { latency, down: UP }
}

#[test]
fn the_same_seed_makes_the_same_choices() {
    let behaviour = [healthy(3), healthy(5), healthy(8), healthy(13)];
    let run = |seed| {
        let mut sim = Simulation::new(seed, &behaviour);
        sim.run(2_000, 4);
        sim.served
    };
    assert_eq!(run(7), run(7));
    assert_ne!(run(7), run(8), "the seed is what drives the choice");
}

#[test]
fn p2c_sends_less_to_a_slow_instance() {
    // Four instances answer in 5 ms, one in 50 ms; 8 requests arrive per ms for 10 s.
    let mut behaviour = vec![healthy(5); 4];
    behaviour.push(healthy(50));
    let mut sim = Simulation::new(1, &behaviour);
    sim.run(10_000, 8);
    assert_eq!(sim.unavailable, 0);
    assert_eq!(sim.total(), 80_000);
    let slow = sim.served[4] as f64 / sim.total() as f64;
    // An even spread would give it 20 %; P2C on requests in flight gives it far less, and
    // never starves it (it still wins against a busier fast one now and then).
    assert!(slow < 0.10, "slow instance share {slow:.3}");
    assert!(slow > 0.01, "slow instance share {slow:.3}");
    for fast in &sim.served[..4] {
        let share = *fast as f64 / sim.total() as f64;
        assert!((0.2..0.3).contains(&share), "{:?}", sim.served);
    }
}

#[test]
fn equal_instances_share_evenly() {
    let mut sim = Simulation::new(3, &[healthy(4); 6]);
    sim.run(5_000, 6);
    let mean = sim.total() as f64 / 6.0;
    for served in &sim.served {
        let off = (*served as f64 - mean).abs() / mean;
        assert!(off < 0.05, "{:?}", sim.served);
    }
}

#[test]
fn a_refusing_instance_is_ejected_with_doubling_backoff_and_no_request_fails() {
    // Instance 0 refuses connects from 1 s to 10 s, then recovers.
    let down = Behaviour {
        latency: 5,
        down: (1_000, 10_000),
    };
    let mut sim = Simulation::new(11, &[down, healthy(5), healthy(5)]);
    sim.run(30_000, 3);

    // Every request found a live instance: a refused connect is retried on another one.
    assert_eq!(sim.unavailable, 0);
    assert_eq!(sim.total(), 90_000);

    // Each refusal ejects it for 500 ms, doubling up to 30 s; while two healthy instances are
    // left it is not tried again before its ejection ends, and is tried soon after (requests
    // arrive every millisecond).
    let refused = &sim.refused_at[0];
    assert!(refused.len() >= 5, "{refused:?}");
    assert_eq!(refused[0], 1_000);
    for (k, pair) in refused.windows(2).enumerate() {
        let backoff = (500u64 << k).min(30_000);
        let gap = pair[1] - pair[0];
        assert!(
            (backoff..backoff + 50).contains(&gap),
            "refusal {k}: gap {gap} ms, backoff {backoff} ms: {refused:?}"
        );
    }
    // Refused at 1, 1.5, 2.5, 4.5 and 8.5 s; the next try, 8 s later, finds it back and
    // resets its health.
    assert_eq!(refused.len(), 5, "{refused:?}");
    assert!(!sim.service.backends()[0].is_ejected_at(sim.now));
    let before = sim.served[0];
    sim.run(5_000, 3);
    let share = (sim.served[0] - before) as f64 / 15_000.0;
    assert!(
        share > 0.25,
        "recovered instance gets its share again: {share:.3}"
    );
}

#[test]
fn when_every_instance_refuses_each_is_tried_once_per_request() {
    let down = Behaviour {
        latency: 5,
        down: (0, u64::MAX),
    };
    let mut sim = Simulation::new(5, &[down; 3]);
    sim.run(10, 1);
    // Ejected instances are still tried when nothing healthy is left: each request tries all
    // three (MAX_ATTEMPTS), then is unavailable.
    assert_eq!(sim.unavailable, 10);
    assert_eq!(
        sim.refused_at.iter().map(Vec::len).sum::<usize>(),
        10 * MAX_ATTEMPTS
    );
}
