//! Zero-downtime deploys under load: wrk sends requests through the router to the app the
//! whole time while it is scaled 3 → 1 → 4 and a new release is deployed all-at-once and then
//! one-by-one; not one request may fail. A release whose server exits at once is rolled back
//! with the old one serving, under load too.

use std::time::{Duration, Instant};

use serde_json::Value;

use super::engine::Wrk;
use super::{Setup, TestImage};

impl TestImage {
    /// The test server's image whose server exits (status 3) as soon as it starts.
    fn crashing() -> TestImage {
        TestImage::import("flynn-test-crash", "--change 'ENV CRASH_AFTER_MS=0'")
    }
}

impl Setup {
    /// wrk through the server's router to the app.
    fn wrk(&self) -> Wrk {
        Wrk::start(
            &self.server.http.to_string(),
            &format!("{}.localhost", self.app),
        )
    }

    /// A request to the controller API; its JSON answer.
    pub(super) async fn api(&self, method: &str, path: &str, body: &str) -> Value {
        let raw = format!(
            "{method} {path} HTTP/1.1\r\nHost: controller\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.server.key(),
            body.len()
        );
        let response =
            flynn_testkit::client::send(&self.server.controller.to_string(), raw.as_bytes())
                .await
                .expect("controller answers");
        assert_eq!(response.status, 200, "{}", response.text());
        response.json().expect("json")
    }

    /// `POST /apps/<app>`: the deploy strategy.
    async fn set_strategy(&self, strategy: &str) {
        let body = format!("{{\"strategy\":\"{strategy}\"}}");
        let app = self
            .api("POST", &format!("/apps/{}", self.app), &body)
            .await;
        assert_eq!(app["strategy"], strategy);
    }

    /// The app's current release id.
    async fn release(&self) -> String {
        let app = self.api("GET", &format!("/apps/{}", self.app), "").await;
        app["release_id"].as_str().expect("a release").to_owned()
    }

    /// The release of every job, and whether each is up.
    async fn job_releases(&self) -> Vec<(String, String)> {
        self.jobs()
            .await
            .iter()
            .map(|j| {
                (
                    j["release_id"].as_str().unwrap_or_default().to_owned(),
                    j["state"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    }

    /// `flynn deploy --image IMAGE`; its output, and how long it took.
    async fn deploy_image(&self, image: &str) -> (String, Duration) {
        let started = Instant::now();
        let out = self.flynn(&["deploy", "--image", image]).await;
        (out.ok().to_owned(), started.elapsed())
    }
}

#[tokio::test]
async fn scale_and_deploy_both_ways_under_load_without_one_failed_request() {
    let s = Setup::new("rolly").await;
    s.deploy().await;
    s.flynn(&["scale", "web=3"]).await.ok();
    let up = s.up().await;
    s.settle("three jobs routed", || async { s.routed(30).await == up })
        .await;

    let wrk = s.wrk();
    tokio::time::sleep(Duration::from_millis(500)).await;

    // 3 → 1 → 4.
    let started = Instant::now();
    s.flynn(&["scale", "web=1"]).await.ok();
    let down = started.elapsed();
    assert_eq!(s.up().await.len(), 1);
    let started = Instant::now();
    s.flynn(&["scale", "web=4"]).await.ok();
    let up_again = started.elapsed();
    let four = s.up().await;
    assert_eq!(four.len(), 4);
    s.settle("four jobs routed", || async { s.routed(40).await == four })
        .await;

    // All at once: four new jobs up and routed, then the old four drained and stopped.
    let before = s.release().await;
    let (out, all_at_once) = s.deploy_image(&s.image.tag).await;
    assert_eq!(
        out.matches("up and served by every router").count(),
        4,
        "{out}"
    );
    assert_eq!(out.matches("drained and stopped").count(), 4, "{out}");
    assert!(out.contains("Deployed release "), "{out}");
    let second = s.release().await;
    assert_ne!(second, before);
    let jobs = s.job_releases().await;
    assert_eq!(jobs.len(), 4, "{jobs:?}");
    assert!(
        jobs.iter().all(|(r, state)| r == &second && state == "up"),
        "{jobs:?}"
    );
    let new_jobs = s.up().await;
    assert!(new_jobs.is_disjoint(&four));
    s.settle("the new jobs routed", || async {
        s.routed(40).await == new_jobs
    })
    .await;

    // One by one: up one, down one, four times.
    s.set_strategy("one-by-one").await;
    let (out, one_by_one) = s.deploy_image(&s.image.tag).await;
    assert_eq!(
        out.matches("up and served by every router").count(),
        4,
        "{out}"
    );
    assert_eq!(out.matches("drained and stopped").count(), 4, "{out}");
    let lines: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("up and served") || l.contains("drained and stopped"))
        .collect();
    for pair in lines.chunks(2) {
        assert!(pair[0].contains("up and served"), "{out}");
        assert!(pair[1].contains("drained and stopped"), "{out}");
    }
    let third = s.release().await;
    assert_ne!(third, second);
    let jobs = s.job_releases().await;
    assert_eq!(jobs.len(), 4, "{jobs:?}");
    assert!(jobs.iter().all(|(r, _)| r == &third), "{jobs:?}");
    assert_eq!(s.containers.all().len(), 4);

    tokio::time::sleep(Duration::from_millis(500)).await;
    let report = wrk.finish();
    eprintln!(
        "scale 3->1: {down:?}, 1->4: {up_again:?}; deploy of 4 all-at-once: {all_at_once:?}, \
         one-by-one: {one_by_one:?}; wrk: {} requests, {} non-2xx, {} socket errors\n{}",
        report.requests, report.non_2xx, report.socket_errors, report.text
    );
    assert!(report.requests > 1000, "{}", report.text);
    assert_eq!(report.non_2xx, 0, "{}", report.text);
    assert_eq!(report.socket_errors, 0, "{}", report.text);

    let out = s.flynn(&["deployment", "-o", "json"]).await;
    let deployments: Value = serde_json::from_str(out.ok()).expect("json");
    let statuses: Vec<&str> = deployments
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|d| d["status"].as_str())
        .collect();
    assert_eq!(statuses, ["complete", "complete", "complete"]);

    s.flynn(&["scale", "web=0"]).await.ok();
    assert!(s.containers.all().is_empty());
}

#[tokio::test]
async fn a_release_that_crashes_is_rolled_back_with_the_old_one_serving() {
    let s = Setup::new("crashy").await;
    s.deploy().await;
    s.flynn(&["scale", "web=2"]).await.ok();
    let old_jobs = s.up().await;
    s.settle("two jobs routed", || async {
        s.routed(20).await == old_jobs
    })
    .await;
    let old = s.release().await;
    let crashing = TestImage::crashing();

    let wrk = s.wrk();
    tokio::time::sleep(Duration::from_millis(300)).await;
    for strategy in ["all-at-once", "one-by-one"] {
        s.set_strategy(strategy).await;
        let started = Instant::now();
        let run = s.flynn(&["deploy", "--image", &crashing.tag]).await;
        run.fails_with("crashed");
        assert!(
            run.stderr.contains(&format!("release {old} still serves")),
            "{run:?}"
        );
        eprintln!(
            "{strategy}: crash detected and rolled back in {:?}",
            started.elapsed()
        );
        assert_eq!(s.release().await, old);
        // Only the old jobs are left, still routed.
        s.settle("the new release's jobs gone", || async {
            s.job_releases().await.iter().all(|(r, _)| r == &old)
        })
        .await;
        assert_eq!(s.up().await, old_jobs);
        assert_eq!(s.routed(20).await, old_jobs);
        s.settle("only the old containers left", || async {
            s.containers.all().len() == 2
        })
        .await;
    }
    let report = wrk.finish();
    eprintln!(
        "wrk during two failed deploys: {} requests, {} non-2xx, {} socket errors",
        report.requests, report.non_2xx, report.socket_errors
    );
    assert_eq!(report.non_2xx, 0, "{}", report.text);
    assert_eq!(report.socket_errors, 0, "{}", report.text);

    let out = s.flynn(&["deployment", "-o", "json"]).await;
    let deployments: Value = serde_json::from_str(out.ok()).expect("json");
    let failed: Vec<&Value> = deployments
        .as_array()
        .expect("list")
        .iter()
        .filter(|d| d["status"] == "failed")
        .collect();
    assert_eq!(failed.len(), 2, "{deployments}");
    for d in failed {
        assert!(
            d["error"].as_str().unwrap_or_default().contains("crashed"),
            "{d}"
        );
    }

    // A good release deploys after the failed ones.
    s.flynn(&["deploy", "--image", &s.image.tag]).await.ok();
    assert_ne!(s.release().await, old);
    s.flynn(&["scale", "web=0"]).await.ok();
    assert!(s.containers.all().is_empty());
}
