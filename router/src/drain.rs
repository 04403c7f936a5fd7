//! Draining: on SIGTERM (or after handing the listeners to a new binary on SIGQUIT) pingora
//! stops accepting; this waits for the requests and TCP connections in flight to finish, bounded
//! by `--drain-timeout`, and then ends pingora's grace period (a vendored hook), so that the
//! process exits through pingora's own shutdown at once when nothing is in flight, instead of
//! sleeping out the whole period.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use async_trait::async_trait;
use pingora::server::{GracePeriodEnd, ShutdownWatch};
use pingora::services::background::BackgroundService;

/// Work in flight: HTTP requests and TCP route connections.
#[derive(Debug, Default)]
pub struct InFlight {
    count: AtomicUsize,
    /// Set once draining starts: only then does the last guard to go wake [`InFlight::idle`]
    /// (so the request path never touches the notifier's lock while serving).
    draining: AtomicBool,
    idle: Notify,
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

    /// Waits until nothing is in flight, or until `deadline`; true when nothing is.
    pub async fn idle(&self, deadline: tokio::time::Instant) -> bool {
        self.draining.store(true, Ordering::SeqCst);
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            // Registered before the count is read: a guard dropped in between still wakes us.
            notified.as_mut().enable();
            if self.count.load(Ordering::SeqCst) == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.count() == 0;
            }
        }
    }
}

/// See [`InFlight::enter`].
#[derive(Debug)]
pub struct Guard(Arc<InFlight>);

impl Drop for Guard {
    fn drop(&mut self) {
        let was = self.0.count.fetch_sub(1, Ordering::SeqCst);
        if was == 1 && self.0.draining.load(Ordering::SeqCst) {
            self.0.idle.notify_waiters();
        }
    }
}

/// The background service that ends the shutdown's grace period once drained.
pub struct Drain {
    pub in_flight: Arc<InFlight>,
    pub timeout: Duration,
    pub grace_end: GracePeriodEnd,
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
        let deadline = tokio::time::Instant::now() + self.timeout;
        if self.in_flight.idle(deadline).await {
            tracing::info!(took = ?started.elapsed(), "drained, shutting down");
        } else {
            let left = self.in_flight.count();
            tracing::warn!(
                left,
                "drain timeout reached, shutting down with work in flight"
            );
        }
        self.grace_end.end();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn idle_wakes_when_the_last_guard_goes() {
        let in_flight = Arc::new(InFlight::default());
        let guards: Vec<_> = (0..3).map(|_| in_flight.enter()).collect();
        let waiter = {
            let in_flight = in_flight.clone();
            tokio::spawn(async move {
                let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
                let started = Instant::now();
                (in_flight.idle(deadline).await, started.elapsed())
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "three guards are still held");
        drop(guards);
        let (idle, took) = waiter.await.expect("waiter");
        assert!(idle);
        assert!(
            took < Duration::from_secs(5),
            "woken, not timed out: {took:?}"
        );
    }

    #[tokio::test]
    async fn idle_gives_up_at_the_deadline() {
        let in_flight = Arc::new(InFlight::default());
        let _guard = in_flight.enter();
        let deadline = tokio::time::Instant::now() + Duration::from_millis(100);
        assert!(!in_flight.idle(deadline).await);
        assert_eq!(in_flight.count(), 1);
    }

    #[tokio::test]
    async fn idle_at_once_when_nothing_is_in_flight() {
        let in_flight = InFlight::default();
        assert!(in_flight.idle(tokio::time::Instant::now()).await);
    }
}
