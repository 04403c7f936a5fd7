//! A job's output outlives its container: the host agent keeps the end of it when it removes
//! the container (a crash, a scale down), and `flynn log` still shows it. The crash is on
//! `/events` with its exit status.

use std::collections::BTreeSet;
use std::time::Instant;

use super::placement::{api, job_states};
use super::{docker, Setup};

/// `flynn log` lines of job `id` that carry `marker`.
fn lines_of<'a>(out: &'a str, id: &str, marker: &str) -> Vec<&'a str> {
    out.lines()
        .filter(|l| l.contains(&format!("app[web.{id}]:")) && l.contains(marker))
        .collect()
}

#[tokio::test]
async fn the_log_of_a_removed_job_is_still_shown() {
    let s = Setup::new("chatty").await;
    s.deploy().await;
    let out = s.flynn(&["scale", "web=2"]).await;
    assert!(out.ok().contains("scale completed"), "{out:?}");
    let jobs = s.up().await;
    s.settle("both jobs routed", || async { s.routed(20).await == jobs })
        .await;
    // Requests the jobs print (`request GET /kept-N`), until both have printed some.
    let n = std::cell::Cell::new(0);
    let (s, jobs) = (&s, &jobs);
    s.settle("both jobs printed a request", || {
        n.set(n.get() + 1);
        let path = format!("/kept-{}", n.get());
        async move {
            let _ = s.server.get("chatty.localhost", &path).await;
            let out = s.flynn(&["log"]).await;
            jobs.iter()
                .all(|id| !lines_of(out.ok(), id, "request GET /kept-").is_empty())
        }
    })
    .await;
    let mut ids = jobs.iter();
    let (victim, other) = (
        ids.next().expect("a job").clone(),
        ids.next().expect("another").clone(),
    );
    let before = s.flynn(&["log", "-j", &victim]).await;
    let kept = lines_of(before.ok(), &victim, "request GET /kept-").len();
    assert!(kept > 0, "{before:?}");

    // The victim crashes (SIGKILL): its container is removed, a new job takes its place.
    let container = docker(&["ps", "-q", "--filter", &format!("label=flynn.job={victim}")]);
    docker(&["kill", container.trim()]);
    s.settle("a new job up in place of the killed one", || async {
        let up = s.up().await;
        up.len() == 2 && !up.contains(&victim)
    })
    .await;
    assert!(
        !s.containers
            .all()
            .iter()
            .any(|c| c.starts_with(container.trim())),
        "the crashed container was removed"
    );
    assert!(
        !s.jobs().await.iter().any(|j| j["id"] == victim.as_str()),
        "the crashed job's record is gone"
    );
    // Its output is still there, by job and among the app's.
    let after = s.flynn(&["log", "-j", &victim]).await;
    assert_eq!(
        lines_of(after.ok(), &victim, "request GET /kept-").len(),
        kept,
        "{after:?}"
    );
    let all = s.flynn(&["log"]).await;
    assert_eq!(
        lines_of(all.ok(), &victim, "request GET /kept-").len(),
        kept
    );
    let tail = s.flynn(&["log", "-j", &victim, "-n", "1"]).await;
    assert_eq!(tail.ok().lines().count(), 1, "{tail:?}");
    // The crash, with its exit status, on /events.
    let (_, app) = api(&s.server, "GET", "/apps/chatty", None);
    let app_id = app["id"].as_str().expect("app id");
    let states = job_states(&s.server, app_id, &victim);
    assert_eq!(states, ["pending", "starting", "up", "crashed"]);
    let (_, events) = api(
        &s.server,
        "GET",
        &format!("/events?object_types=job&app_id={app_id}"),
        None,
    );
    let crashed = events
        .as_array()
        .expect("events")
        .iter()
        .find(|e| e["object_id"] == victim.as_str() && e["data"]["state"] == "crashed")
        .expect("the crash event")
        .clone();
    assert_eq!(crashed["data"]["exit_status"], 137, "{crashed}");

    // Scaled to zero: the other job's container goes, its output stays.
    let started = Instant::now();
    let out = s.flynn(&["scale", "web=0"]).await;
    assert!(out.ok().contains("scale completed"), "{out:?}");
    eprintln!("scale to 0 with the output kept: {:?}", started.elapsed());
    assert!(s.containers.all().is_empty());
    let out = s.flynn(&["log", "-j", &other]).await;
    assert!(
        !lines_of(out.ok(), &other, "request GET /kept-").is_empty(),
        "{out:?}"
    );
    let all = s.flynn(&["log"]).await;
    let shown: BTreeSet<&str> = [victim.as_str(), other.as_str()]
        .into_iter()
        .filter(|id| !lines_of(all.ok(), id, "request GET /kept-").is_empty())
        .collect();
    assert_eq!(shown.len(), 2, "{all:?}");
    // A job that never was: still an error.
    s.flynn(&["log", "-j", "no-such-job"])
        .await
        .fails_with("has no job \"no-such-job\"");
}
