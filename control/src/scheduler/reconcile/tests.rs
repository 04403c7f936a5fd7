//! The planner's cases: placement, scaling, back-off, dead hosts, tags, omni, blocked jobs.

use super::*;

fn app() -> App {
    App {
        id: "a1".to_owned(),
        name: "shop".to_owned(),
        meta: Default::default(),
        strategy: "all-at-once".to_owned(),
        release_id: Some("r1".to_owned()),
        deploy_timeout: 30,
        created_at: String::new(),
        updated_at: String::new(),
    }
}

fn host(id: &str) -> Host {
    Host {
        id: id.to_owned(),
        external_ip: "127.0.0.1".parse().expect("ip"),
        api: String::new(),
        tags: Default::default(),
        capacity: Default::default(),
        docker_version: String::new(),
        registered_at: String::new(),
    }
}

fn formation(web: i64) -> Formation {
    Formation {
        app: "a1".to_owned(),
        release: "r1".to_owned(),
        processes: [("web".to_owned(), web)].into_iter().collect(),
        tags: Default::default(),
        created_at: String::new(),
        updated_at: String::new(),
    }
}

fn job(id: &str, host: &str, state: JobState) -> Job {
    Job {
        id: id.to_owned(),
        app_id: "a1".to_owned(),
        app_name: "shop".to_owned(),
        release_id: "r1".to_owned(),
        process_type: "web".to_owned(),
        host_id: host.to_owned(),
        state,
        created_at: id.to_owned(),
        ..Job::default()
    }
}

fn run(formations: &[Formation], jobs: &[Job], hosts: &[Host], now_ms: u64) -> Plan {
    run_with(formations, &HashMap::new(), jobs, hosts, now_ms)
}

fn run_with(
    formations: &[Formation],
    releases: &HashMap<String, Release>,
    jobs: &[Job],
    hosts: &[Host],
    now_ms: u64,
) -> Plan {
    let apps = HashMap::from([("a1".to_owned(), app())]);
    let mut n = 0;
    plan(
        &State {
            formations,
            apps: &apps,
            releases,
            jobs,
            hosts,
            now_ms,
        },
        &mut || {
            n += 1;
            format!("new{n}")
        },
        "now",
    )
}

#[test]
fn spreads_new_jobs_over_the_least_loaded_hosts() {
    let hosts = [host("h1"), host("h2")];
    let jobs = [job("j1", "h1", JobState::Up)];
    let plan = run(&[formation(4)], &jobs, &hosts, 0);
    let placed: Vec<&str> = plan.start.iter().map(|j| j.host_id.as_str()).collect();
    assert_eq!(placed, ["h2", "h1", "h2"]);
    assert!(plan.stop.is_empty() && plan.forget.is_empty());
}

#[test]
fn scales_down_the_least_advanced_and_newest_first() {
    let hosts = [host("h1")];
    let jobs = [
        job("j1", "h1", JobState::Up),
        job("j2", "h1", JobState::Up),
        job("j3", "h1", JobState::Starting),
    ];
    let plan = run(&[formation(1)], &jobs, &hosts, 0);
    assert_eq!(
        plan.stop,
        [
            ("h1".to_owned(), "j3".to_owned()),
            ("h1".to_owned(), "j2".to_owned())
        ]
    );
    // No formation at all: everything stops.
    let plan = run(&[], &jobs, &hosts, 0);
    assert_eq!(plan.stop.len(), 3);
}

#[test]
fn restarts_crashed_jobs_with_backoff() {
    let hosts = [host("h1")];
    let mut crashed = job("j1", "h1", JobState::Crashed);
    crashed.ended_at_ms = Some(1_000);
    crashed.restarts = 4;
    // The fifth restart: at once.
    let plan = run(
        &[formation(1)],
        std::slice::from_ref(&crashed),
        &hosts,
        1_000,
    );
    assert_eq!(plan.start.len(), 1);
    assert_eq!(plan.start[0].restarts, 5);
    assert_eq!(plan.forget, [("h1".to_owned(), "j1".to_owned())]);
    // The sixth: after 10 s.
    crashed.restarts = 5;
    let plan = run(
        &[formation(1)],
        std::slice::from_ref(&crashed),
        &hosts,
        5_000,
    );
    assert!(plan.start.is_empty() && plan.forget.is_empty());
    assert_eq!(plan.wake_at, Some(11_000));
    let plan = run(
        &[formation(1)],
        std::slice::from_ref(&crashed),
        &hosts,
        11_000,
    );
    assert_eq!(plan.start[0].restarts, 6);
    // Later ones: after 30 s.
    assert_eq!(backoff(6), Duration::from_secs(30));
    // Up for 5 minutes before crashing: the count starts again.
    crashed.up_at_ms = Some(1_000);
    crashed.ended_at_ms = Some(1_000 + 300_000);
    let plan = run(
        &[formation(1)],
        std::slice::from_ref(&crashed),
        &hosts,
        301_000,
    );
    assert_eq!(plan.start[0].restarts, 1);
    // Not wanted any more: forgotten, not restarted.
    let plan = run(
        &[formation(0)],
        std::slice::from_ref(&crashed),
        &hosts,
        301_000,
    );
    assert!(plan.start.is_empty());
    assert_eq!(plan.forget.len(), 1);
}

#[test]
fn replaces_the_jobs_of_a_dead_host_and_blocks_without_hosts() {
    let jobs = [job("j1", "gone", JobState::Up)];
    let plan = run(&[formation(1)], &jobs, &[host("h2")], 0);
    assert_eq!(plan.forget, [("gone".to_owned(), "j1".to_owned())]);
    assert_eq!(plan.start[0].host_id, "h2");
    let plan = run(&[formation(2)], &[], &[], 0);
    assert!(plan.start.is_empty());
    assert_eq!(
        plan.blocked,
        [("a1".to_owned(), "r1".to_owned(), "web".to_owned(), 2)]
    );
}

fn tagged(id: &str, tags: &[(&str, &str)]) -> Host {
    let mut h = host(id);
    h.tags = tags
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    h
}

fn constrained(web: i64, tags: &[(&str, &str)]) -> Formation {
    let mut f = formation(web);
    f.tags.insert(
        "web".to_owned(),
        tags.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    );
    f
}

fn omni_release() -> HashMap<String, Release> {
    let mut web = crate::api::types::ProcessType::default();
    web.extra
        .insert("omni".to_owned(), serde_json::Value::Bool(true));
    HashMap::from([(
        "r1".to_owned(),
        Release {
            id: "r1".to_owned(),
            app_id: Some("a1".to_owned()),
            artifacts: vec![],
            env: Default::default(),
            meta: Default::default(),
            processes: [("web".to_owned(), web)].into(),
            created_at: String::new(),
        },
    )])
}

fn ids(jobs: &[Job]) -> Vec<&str> {
    jobs.iter().map(|j| j.host_id.as_str()).collect()
}

#[test]
fn places_only_on_hosts_with_the_tags() {
    let hosts = [
        tagged("h1", &[("disk", "hdd")]),
        tagged("h2", &[("disk", "ssd"), ("zone", "a")]),
        tagged("h3", &[("disk", "ssd")]),
    ];
    let plan = run(&[constrained(4, &[("disk", "ssd")])], &[], &hosts, 0);
    assert_eq!(ids(&plan.start), ["h2", "h3", "h2", "h3"]);
    let plan = run(
        &[constrained(2, &[("disk", "ssd"), ("zone", "a")])],
        &[],
        &hosts,
        0,
    );
    assert_eq!(ids(&plan.start), ["h2", "h2"]);
    assert!(plan.block.is_empty());
}

#[test]
fn a_job_nothing_matches_is_blocked_then_placed_with_its_id() {
    let hosts = [tagged("h1", &[("disk", "hdd")])];
    let f = [constrained(1, &[("disk", "ssd")])];
    let plan = run(&f, &[], &hosts, 0);
    assert!(plan.start.is_empty());
    assert_eq!(plan.block.len(), 1);
    let blocked = plan.block[0].clone();
    assert_eq!(blocked.state, JobState::Blocked);
    assert_eq!(blocked.host_id, "");
    assert_eq!(
        blocked.error.as_deref(),
        Some("no host has the tags disk=ssd (of 1 live hosts)")
    );
    // Planned again with the record in place: nothing new.
    let plan = run(&f, std::slice::from_ref(&blocked), &hosts, 0);
    assert_eq!(
        plan,
        Plan {
            blocked: vec![("a1".to_owned(), "r1".to_owned(), "web".to_owned(), 1)],
            ..Plan::default()
        }
    );
    // The reason changes with the hosts: written again.
    let plan = run(&f, std::slice::from_ref(&blocked), &[], 0);
    assert_eq!(plan.reblock.len(), 1);
    assert_eq!(
        plan.reblock[0].error.as_deref(),
        Some("no host is registered")
    );
    // A matching host comes: the blocked job is placed there, same id.
    let hosts = [hosts[0].clone(), tagged("h2", &[("disk", "ssd")])];
    let plan = run(&f, std::slice::from_ref(&blocked), &hosts, 0);
    assert_eq!(plan.start.len(), 1);
    assert_eq!(plan.start[0].id, blocked.id);
    assert_eq!(plan.start[0].host_id, "h2");
    assert_eq!(plan.start[0].state, JobState::Pending);
    assert_eq!(plan.unblock, vec![blocked.id.clone()]);
    assert!(plan.blocked.is_empty());
    // Placed, but its blocked record still there: only the record goes.
    let mut placed = plan.start[0].clone();
    placed.state = JobState::Up;
    let plan = run(&f, &[blocked.clone(), placed], &hosts, 0);
    assert!(plan.start.is_empty() && plan.block.is_empty());
    assert_eq!(plan.unblock, vec![blocked.id.clone()]);
    // Scaled to zero: the blocked record goes.
    let plan = run(
        &[constrained(0, &[("disk", "ssd")])],
        std::slice::from_ref(&blocked),
        &[],
        0,
    );
    assert_eq!(plan.unblock, [blocked.id]);
}

#[test]
fn a_job_on_a_host_whose_tags_no_longer_match_moves() {
    let hosts = [
        tagged("h1", &[("disk", "hdd")]),
        tagged("h2", &[("disk", "ssd")]),
    ];
    let jobs = [job("j1", "h1", JobState::Up)];
    let plan = run(&[constrained(1, &[("disk", "ssd")])], &jobs, &hosts, 0);
    assert_eq!(plan.stop, [("h1".to_owned(), "j1".to_owned())]);
    assert_eq!(ids(&plan.start), ["h2"]);
}

#[test]
fn omni_runs_on_every_matching_host_and_follows_them() {
    let releases = omni_release();
    let hosts = [
        tagged("h1", &[("role", "edge")]),
        tagged("h2", &[("role", "edge")]),
        tagged("h3", &[]),
    ];
    let plan = run_with(&[formation(1)], &releases, &[], &hosts, 0);
    assert_eq!(ids(&plan.start), ["h1", "h2", "h3"]);
    let f = [constrained(1, &[("role", "edge")])];
    let plan = run_with(&f, &releases, &[], &hosts, 0);
    assert_eq!(ids(&plan.start), ["h1", "h2"]);
    // One up on h1: only h2 gets one; a second one on h1 is stopped.
    let jobs = [
        job("j1", "h1", JobState::Up),
        job("j2", "h1", JobState::Starting),
    ];
    let plan = run_with(&f, &releases, &jobs, &hosts, 0);
    assert_eq!(ids(&plan.start), ["h2"]);
    assert_eq!(plan.stop, [("h1".to_owned(), "j2".to_owned())]);
    // h1 goes: its job is forgotten and nothing moves to h2 (it has its own).
    let jobs = [job("j1", "h1", JobState::Up), job("j3", "h2", JobState::Up)];
    let plan = run_with(&f, &releases, &jobs, &hosts[1..], 0);
    assert_eq!(plan.forget, [("h1".to_owned(), "j1".to_owned())]);
    assert!(plan.start.is_empty());
    // No matching host at all: blocked.
    let plan = run_with(&f, &releases, &[], &hosts[2..], 0);
    assert!(plan.start.is_empty());
    assert_eq!(plan.block.len(), 1);
}
