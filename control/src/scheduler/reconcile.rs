//! One level-triggered pass: formations against jobs, as a list of actions. Pure: the same
//! state always gives the same plan, and applying a plan twice does no harm (the next pass sees
//! what the first one did). The benchmark (`benches/benches/reconcile.rs`) calls it as is.
//!
//! Placement ([`super::placement`]): a job goes to a live host that has its process type's
//! tags, the one with the fewest jobs of its formation and type (then the fewest jobs in all);
//! an omni type gets its count on every such host. A job nothing matches is `blocked`: a record
//! with the reason, placed (same id) by the first pass that finds a host for it, which runs
//! whenever the set of hosts changes. A job left on a host whose tags no longer match is
//! stopped (as Flynn did), and a new one placed on a matching host.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use super::placement;
use crate::api::types::{App, Formation, Host, Job, JobState, Release};

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
    /// The formations' releases (for their process types' `omni`); one missing: not omni.
    pub releases: &'a HashMap<String, Release>,
    /// The jobs on hosts, and the blocked ones (state `blocked`, on no host).
    pub jobs: &'a [Job],
    pub hosts: &'a [Host],
    pub now_ms: u64,
}

/// What to do.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// New jobs (pending, on a host); a blocked job placed keeps its id.
    pub start: Vec<Job>,
    /// Jobs to mark `stop` (host, job).
    pub stop: Vec<(String, String)>,
    /// Job records to delete (host, job): crashed ones replaced or no longer wanted, and
    /// those of hosts that are gone.
    pub forget: Vec<(String, String)>,
    /// New blocked jobs (no host matches them), to record.
    pub block: Vec<Job>,
    /// Blocked jobs whose reason changed, to write again.
    pub reblock: Vec<Job>,
    /// Blocked jobs to delete (by id): placed now, or no longer wanted.
    pub unblock: Vec<String>,
    /// Process types that want jobs but have no host (app id, release, type, missing).
    pub blocked: Vec<(String, String, String, usize)>,
    /// When a back-off ends (Unix ms): plan again then.
    pub wake_at: Option<u64>,
}

type Group = (String, String, String);

/// What a formation wants of one process type.
struct Want<'a> {
    count: usize,
    tags: Option<&'a BTreeMap<String, String>>,
    omni: bool,
}

/// Jobs placed together: all of a process type, or (omni) those of one host.
struct Set<'a> {
    /// Where they may go.
    hosts: Vec<&'a Host>,
    want: usize,
    active: Vec<&'a Job>,
    crashed: Vec<&'a Job>,
}

/// One new job to place: a crashed job's replacement, or a fresh one (maybe a blocked one).
struct Slot<'a> {
    restarts: u32,
    replaces: Option<&'a Job>,
    reuses: Option<&'a Job>,
}

pub fn plan(state: &State<'_>, new_id: &mut dyn FnMut() -> String, now: &str) -> Plan {
    let mut plan = Plan::default();
    let live: HashMap<&str, &Host> = state.hosts.iter().map(|h| (h.id.as_str(), h)).collect();
    let mut wanted: BTreeMap<Group, Want<'_>> = BTreeMap::new();
    for formation in state.formations {
        let release = state.releases.get(&formation.release);
        for (process_type, count) in &formation.processes {
            let omni = release
                .and_then(|r| r.processes.get(process_type))
                .is_some_and(placement::is_omni);
            wanted.insert(
                (
                    formation.app.clone(),
                    formation.release.clone(),
                    process_type.clone(),
                ),
                Want {
                    count: (*count).max(0) as usize,
                    tags: formation.tags.get(process_type),
                    omni,
                },
            );
        }
    }
    let mut groups: BTreeMap<Group, Vec<&Job>> = BTreeMap::new();
    for job in state.jobs {
        if job.state != JobState::Blocked && !live.contains_key(job.host_id.as_str()) {
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
    for (group, want) in &wanted {
        if want.count > 0 {
            groups.entry(group.clone()).or_default();
        }
    }
    // Jobs per host, for placement: of this group first, then in all.
    let mut per_host: HashMap<&str, usize> = HashMap::new();
    for job in state.jobs {
        if !job.stop && job.state.is_active() {
            *per_host.entry(job.host_id.as_str()).or_default() += 1;
        }
    }
    let no_tags = BTreeMap::new();
    for (group, jobs) in groups {
        let want = wanted.get(&group);
        let count = want.map_or(0, |w| w.count);
        let tags = want.and_then(|w| w.tags).unwrap_or(&no_tags);
        let omni = want.is_some_and(|w| w.omni);
        let matching: Vec<&Host> = state
            .hosts
            .iter()
            .filter(|h| placement::matches(tags, h))
            .collect();
        let fits = |job: &Job| {
            live.get(job.host_id.as_str())
                .is_some_and(|h| placement::matches(tags, h))
        };
        let mut active = Vec::new();
        let mut crashed = Vec::new();
        let mut blocked = Vec::new();
        for job in jobs.iter().copied() {
            match job.state {
                JobState::Blocked => blocked.push(job),
                _ if job.stop => {}
                JobState::Crashed => crashed.push(job),
                s if s.is_active() && !fits(job) => {
                    // Its host's tags no longer match (the host's or the formation's changed).
                    plan.stop.push((job.host_id.clone(), job.id.clone()));
                }
                s if s.is_active() => active.push(job),
                _ => {}
            }
        }
        // Blocked records to place first (oldest first), unless a job of that id is already
        // on a host (a pass that placed it and stopped before deleting its record).
        blocked.sort_by(|a, b| (&b.created_at, &b.id).cmp(&(&a.created_at, &a.id)));
        let mut spare: Vec<&Job> = Vec::new();
        for job in blocked {
            if jobs
                .iter()
                .any(|j| j.id == job.id && j.state != JobState::Blocked)
            {
                plan.unblock.push(job.id.clone());
            } else {
                spare.push(job);
            }
        }
        crashed.sort_by_key(|j| (j.ended_at_ms.unwrap_or(0), j.id.clone()));
        let app = state.apps.get(&group.0);
        let sets: Vec<Set<'_>> = if omni && !matching.is_empty() {
            let mut sets = Vec::new();
            for host in &matching {
                let on = |j: &&Job| j.host_id == host.id;
                sets.push(Set {
                    hosts: vec![*host],
                    want: count,
                    active: active.iter().copied().filter(on).collect(),
                    crashed: crashed.iter().copied().filter(on).collect(),
                });
            }
            // Crashed jobs of hosts that no longer match: nothing to restart there.
            for job in crashed.iter().filter(|j| !fits(j)) {
                plan.forget.push((job.host_id.clone(), job.id.clone()));
            }
            sets
        } else {
            vec![Set {
                hosts: matching.clone(),
                want: count,
                active,
                crashed,
            }]
        };
        let reason = placement::why_blocked(tags, state.hosts.len());
        let mut missing = 0;
        for Set {
            hosts: candidates,
            want,
            active,
            crashed,
        } in sets
        {
            let slots = slots(
                &mut plan,
                state.now_ms,
                want,
                active.clone(),
                crashed,
                &mut spare,
            );
            let Some(app) = app else {
                let reused = slots.iter().filter_map(|s| s.reuses);
                plan.unblock.extend(reused.map(|j| j.id.clone()));
                continue;
            };
            let mut group_per_host: HashMap<&str, usize> = HashMap::new();
            for job in &active {
                *group_per_host.entry(job.host_id.as_str()).or_default() += 1;
            }
            for slot in slots {
                let host = candidates.iter().min_by(|a, b| {
                    let load = |h: &Host| {
                        (
                            group_per_host.get(h.id.as_str()).copied().unwrap_or(0),
                            per_host.get(h.id.as_str()).copied().unwrap_or(0),
                        )
                    };
                    load(a).cmp(&load(b)).then(a.id.cmp(&b.id))
                });
                if let Some(crashed) = slot.replaces {
                    plan.forget
                        .push((crashed.host_id.clone(), crashed.id.clone()));
                }
                let Some(host) = host else {
                    missing += 1;
                    match slot.reuses {
                        Some(job) if job.error.as_deref() == Some(reason.as_str()) => {}
                        Some(job) => {
                            let mut job = job.clone();
                            job.error = Some(reason.clone());
                            job.updated_at = now.to_owned();
                            plan.reblock.push(job);
                        }
                        None => {
                            let mut job = new_job(&group, app, new_id(), "", slot.restarts, now);
                            job.state = JobState::Blocked;
                            job.error = Some(reason.clone());
                            plan.block.push(job);
                        }
                    }
                    continue;
                };
                *group_per_host.entry(host.id.as_str()).or_default() += 1;
                *per_host.entry(host.id.as_str()).or_default() += 1;
                let job = match slot.reuses {
                    Some(blocked) => {
                        plan.unblock.push(blocked.id.clone());
                        let mut job = new_job(
                            &group,
                            app,
                            blocked.id.clone(),
                            &host.id,
                            blocked.restarts,
                            now,
                        );
                        job.created_at = blocked.created_at.clone();
                        job
                    }
                    None => new_job(&group, app, new_id(), &host.id, slot.restarts, now),
                };
                plan.start.push(job);
            }
        }
        plan.unblock.extend(spare.into_iter().map(|j| j.id.clone()));
        if missing > 0 {
            plan.blocked
                .push((group.0.clone(), group.1.clone(), group.2.clone(), missing));
        }
    }
    plan
}

/// The jobs a set of `want` needs beyond its `active` ones (stopping the surplus): crashed
/// jobs' replacements whose back-off is over (those still in back-off hold their slot), then
/// blocked jobs from `spare`, then fresh ones. Crashed jobs beyond the need are forgotten.
fn slots<'a>(
    plan: &mut Plan,
    now_ms: u64,
    want: usize,
    mut active: Vec<&'a Job>,
    crashed: Vec<&'a Job>,
    spare: &mut Vec<&'a Job>,
) -> Vec<Slot<'a>> {
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
    let mut slots = Vec::new();
    for job in crashed {
        if need == 0 {
            plan.forget.push((job.host_id.clone(), job.id.clone()));
            continue;
        }
        need -= 1;
        let ended = job.ended_at_ms.unwrap_or(now_ms);
        let ran_long = job
            .up_at_ms
            .is_some_and(|up| ended.saturating_sub(up) >= BACKOFF_RESET.as_millis() as u64);
        let count = if ran_long { 0 } else { job.restarts };
        let due = ended + backoff(count).as_millis() as u64;
        if due <= now_ms {
            slots.push(Slot {
                restarts: count + 1,
                replaces: Some(job),
                reuses: None,
            });
        } else {
            plan.wake_at = Some(plan.wake_at.map_or(due, |w| w.min(due)));
        }
    }
    for _ in 0..need {
        let reuses = spare.pop();
        slots.push(Slot {
            restarts: reuses.map_or(0, |j| j.restarts),
            replaces: None,
            reuses,
        });
    }
    slots
}

fn new_job(group: &Group, app: &App, id: String, host: &str, restarts: u32, now: &str) -> Job {
    let (app_id, release_id, process_type) = group;
    Job {
        id,
        app_id: app_id.clone(),
        app_name: app.name.clone(),
        release_id: release_id.clone(),
        process_type: process_type.clone(),
        host_id: host.to_owned(),
        state: JobState::Pending,
        restarts,
        created_at: now.to_owned(),
        updated_at: now.to_owned(),
        ..Job::default()
    }
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
mod tests;
