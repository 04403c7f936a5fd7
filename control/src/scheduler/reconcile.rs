//! One level-triggered pass: formations against jobs, as a list of actions. Pure: the same
//! state always gives the same plan, and applying a plan twice does no harm (the next pass sees
//! what the first one did).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use crate::api::types::{App, Formation, Host, Job, JobState};

/// A crashed job's replacement starts after this back-off (Flynn's): at once for the first 5
/// restarts, then 10 s, then 30 s.
pub fn backoff(restarts: u32) -> Duration {
    match restarts {
        0..=4 => Duration::ZERO,
        5 => Duration::from_secs(10),
        _ => Duration::from_secs(30),
    }
}

/// A job up this long before it crashed starts its slot's restart count again.
pub const BACKOFF_RESET: Duration = Duration::from_secs(300);

/// What the scheduler sees.
pub struct State<'a> {
    pub formations: &'a [Formation],
    pub apps: &'a HashMap<String, App>,
    pub jobs: &'a [Job],
    pub hosts: &'a [Host],
    pub now_ms: u64,
}

/// What to do.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// New jobs (pending, on a host).
    pub start: Vec<Job>,
    /// Jobs to mark `stop` (host, job).
    pub stop: Vec<(String, String)>,
    /// Job records to delete (host, job): crashed ones replaced or no longer wanted, and
    /// those of hosts that are gone.
    pub forget: Vec<(String, String)>,
    /// Process types that want jobs but have no host (app id, release, type, missing).
    pub blocked: Vec<(String, String, String, usize)>,
    /// When a back-off ends (Unix ms): plan again then.
    pub wake_at: Option<u64>,
}

type Group = (String, String, String);

pub fn plan(state: &State<'_>, new_id: &mut dyn FnMut() -> String, now: &str) -> Plan {
    let mut plan = Plan::default();
    let live: BTreeSet<&str> = state.hosts.iter().map(|h| h.id.as_str()).collect();
    let mut wanted: BTreeMap<Group, i64> = BTreeMap::new();
    for formation in state.formations {
        for (process_type, count) in &formation.processes {
            wanted.insert(
                (
                    formation.app.clone(),
                    formation.release.clone(),
                    process_type.clone(),
                ),
                (*count).max(0),
            );
        }
    }
    let mut groups: BTreeMap<Group, Vec<&Job>> = BTreeMap::new();
    for job in state.jobs {
        if !live.contains(job.host_id.as_str()) {
            // The host's lease ended: whatever it ran is gone with it.
            plan.forget.push((job.host_id.clone(), job.id.clone()));
            continue;
        }
        groups
            .entry((
                job.app_id.clone(),
                job.release_id.clone(),
                job.process_type.clone(),
            ))
            .or_default()
            .push(job);
    }
    for group in wanted.keys() {
        groups.entry(group.clone()).or_default();
    }
    // Jobs per host, for placement: of this group first, then in all.
    let mut per_host: HashMap<&str, usize> = HashMap::new();
    for job in state.jobs {
        if !job.stop && job.state.is_active() {
            *per_host.entry(job.host_id.as_str()).or_default() += 1;
        }
    }
    for (group, jobs) in groups {
        let want = wanted.get(&group).copied().unwrap_or(0) as usize;
        let mut active: Vec<&Job> = jobs
            .iter()
            .copied()
            .filter(|j| !j.stop && j.state.is_active())
            .collect();
        let mut crashed: Vec<&Job> = jobs
            .iter()
            .copied()
            .filter(|j| !j.stop && j.state == JobState::Crashed)
            .collect();
        crashed.sort_by_key(|j| (j.ended_at_ms.unwrap_or(0), j.id.clone()));
        if active.len() > want {
            // Stop the least advanced first, then the newest.
            active.sort_by(|a, b| {
                rank(a.state)
                    .cmp(&rank(b.state))
                    .then(b.created_at.cmp(&a.created_at))
                    .then(a.id.cmp(&b.id))
            });
            for job in &active[..active.len() - want] {
                plan.stop.push((job.host_id.clone(), job.id.clone()));
            }
        }
        let mut need = want.saturating_sub(active.len());
        let mut group_per_host: HashMap<&str, usize> = HashMap::new();
        for job in &active {
            *group_per_host.entry(job.host_id.as_str()).or_default() += 1;
        }
        // (restart count of the new job, the crashed job it replaces)
        let mut slots: Vec<(u32, Option<&Job>)> = Vec::new();
        for job in crashed {
            if need == 0 {
                plan.forget.push((job.host_id.clone(), job.id.clone()));
                continue;
            }
            need -= 1;
            let ended = job.ended_at_ms.unwrap_or(state.now_ms);
            let ran_long = job
                .up_at_ms
                .is_some_and(|up| ended.saturating_sub(up) >= BACKOFF_RESET.as_millis() as u64);
            let count = if ran_long { 0 } else { job.restarts };
            let due = ended + backoff(count).as_millis() as u64;
            if due <= state.now_ms {
                slots.push((count + 1, Some(job)));
            } else {
                plan.wake_at = Some(plan.wake_at.map_or(due, |w| w.min(due)));
            }
        }
        slots.extend(std::iter::repeat_n((0, None), need));
        if slots.is_empty() {
            continue;
        }
        let (app_id, release_id, process_type) = &group;
        let Some(app) = state.apps.get(app_id) else {
            continue;
        };
        for (placed, (restarts, replaces)) in slots.iter().enumerate() {
            let Some(host) = state.hosts.iter().min_by(|a, b| {
                let load = |h: &Host| {
                    (
                        group_per_host.get(h.id.as_str()).copied().unwrap_or(0),
                        per_host.get(h.id.as_str()).copied().unwrap_or(0),
                    )
                };
                load(a).cmp(&load(b)).then(a.id.cmp(&b.id))
            }) else {
                plan.blocked.push((
                    app_id.clone(),
                    release_id.clone(),
                    process_type.clone(),
                    slots.len() - placed,
                ));
                break;
            };
            if let Some(crashed) = replaces {
                plan.forget
                    .push((crashed.host_id.clone(), crashed.id.clone()));
            }
            *group_per_host.entry(host.id.as_str()).or_default() += 1;
            *per_host.entry(host.id.as_str()).or_default() += 1;
            plan.start.push(Job {
                id: new_id(),
                app_id: app_id.clone(),
                app_name: app.name.clone(),
                release_id: release_id.clone(),
                process_type: process_type.clone(),
                host_id: host.id.clone(),
                state: JobState::Pending,
                stop: false,
                restarts: *restarts,
                container_id: None,
                addr: None,
                exit_status: None,
                error: None,
                created_at: now.to_owned(),
                updated_at: now.to_owned(),
                up_at_ms: None,
                ended_at_ms: None,
            });
        }
    }
    plan
}

/// Which jobs go first when scaling down: pending, then starting, then up.
fn rank(state: JobState) -> u8 {
    match state {
        JobState::Pending => 0,
        JobState::Starting => 1,
        _ => 2,
    }
}

#[cfg(test)]
mod tests {
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
            stop: false,
            restarts: 0,
            container_id: None,
            addr: None,
            exit_status: None,
            error: None,
            created_at: id.to_owned(),
            updated_at: String::new(),
            up_at_ms: None,
            ended_at_ms: None,
        }
    }

    fn run(formations: &[Formation], jobs: &[Job], hosts: &[Host], now_ms: u64) -> Plan {
        let apps = HashMap::from([("a1".to_owned(), app())]);
        let mut n = 0;
        plan(
            &State {
                formations,
                apps: &apps,
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
}
