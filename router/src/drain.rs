//! Draining: on SIGTERM (or after handing the listeners to a new binary on SIGQUIT) pingora
//! stops accepting; this waits for the requests and TCP connections in flight to finish, bounded
//! by `--drain-timeout`, and then ends the process — at once when nothing is in flight, instead
//! of sleeping out pingora's whole grace period.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

/// Work in flight: HTTP requests and TCP route connections.
#[derive(Debug, Default)]
pub struct InFlight {
    count: AtomicUsize,
}

impl InFlight {
    /// Counts one piece of work until the guard is dropped.
    pub fn enter(self: &Arc<Self>) -> Guard {
        self.count.fetch_add(1, Ordering::Relaxed);
        Guard(self.clone())
    }

    pub fn count(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }
}

/// See [`InFlight::enter`].
#[derive(Debug)]
pub struct Guard(Arc<InFlight>);

impl Drop for Guard {
    fn drop(&mut self) {
        self.0.count.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The background service that ends the process once drained.
pub struct Drain {
    pub in_flight: Arc<InFlight>,
    pub timeout: Duration,
}

#[async_trait]
impl BackgroundService for Drain {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        while !*shutdown.borrow() {
            if shutdown.changed().await.is_err() {
                return;
            }
        }
        let started = Instant::now();
        tracing::info!(
            in_flight = self.in_flight.count(),
            timeout = ?self.timeout,
            "draining: no new connections, waiting for those in flight"
        );
        while self.in_flight.count() > 0 && started.elapsed() < self.timeout {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let left = self.in_flight.count();
        if left == 0 {
            tracing::info!(took = ?started.elapsed(), "drained, exiting");
        } else {
            tracing::warn!(left, "drain timeout reached, exiting with work in flight");
        }
        std::process::exit(0);
    }
}
