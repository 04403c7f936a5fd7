//! The scheduler's reconcile pass, as a simulation: the state is built in memory (1,000 apps,
//! one formation each of `web=3 worker=1`, 50 simulated hosts with tags), no store, no Docker
//! Engine, no host agent. It times [`reconcile::plan`], the pure decision the leader runs on
//! every pass (formations + jobs + hosts → start/stop/forget/block), the very function the
//! scheduler calls; what the pass costs besides (listing the store, writing the plan) is not in
//! it. Target: one pass over 1,000 formations under 100 ms on the 2-core machine.
//!
//! Cases: `steady` (every job up where it should be: the pass finds nothing to do, the common
//! case), `cold` (no jobs yet: 4,000 placements), `churn` (a host gone and 5% of the jobs
//! crashed: replacements and forgets), `blocked` (a tenth of the formations ask for a tag no
//! host has).
//!
//! `cargo bench -p flynn-benches --bench reconcile`

use std::collections::{BTreeMap, HashMap};
use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use flynn_control::api::types::{App, Formation, Host, Job, JobState, ProcessType, Release};
use flynn_control::scheduler::reconcile::{self, Plan, State};

const APPS: usize = 1000;
const HOSTS: usize = 50;

/// The simulated cluster.
struct Cluster {
    formations: Vec<Formation>,
    apps: HashMap<String, App>,
    releases: HashMap<String, Release>,
    hosts: Vec<Host>,
}

fn cluster(blocked_every: Option<usize>) -> Cluster {
    let hosts: Vec<Host> = (0..HOSTS)
        .map(|h| Host {
            id: format!("host-{h:02}"),
            external_ip: "127.0.0.1".parse().expect("ip"),
            api: String::new(),
            tags: BTreeMap::from([
                ("zone".to_owned(), format!("z{}", h % 3)),
                (
                    "disk".to_owned(),
                    if h % 2 == 0 { "ssd" } else { "hdd" }.to_owned(),
                ),
            ]),
            capacity: Default::default(),
            docker_version: "20.10".to_owned(),
            registered_at: String::new(),
        })
        .collect();
    let mut formations = Vec::new();
    let mut apps = HashMap::new();
    let mut releases = HashMap::new();
    for a in 0..APPS {
        let (app_id, release_id) = (format!("app-{a:04}"), format!("release-{a:04}"));
        apps.insert(
            app_id.clone(),
            App {
                id: app_id.clone(),
                name: format!("app{a}"),
                meta: Default::default(),
                strategy: "all-at-once".to_owned(),
                release_id: Some(release_id.clone()),
                deploy_timeout: 30,
                created_at: String::new(),
                updated_at: String::new(),
            },
        );
        let mut web = ProcessType::default();
        // One app in 50 runs an omni worker.
        let mut worker = ProcessType::default();
        if a % 50 == 0 {
            worker
                .extra
                .insert("omni".to_owned(), serde_json::Value::Bool(true));
        }
        web.args = vec!["/web".to_owned()];
        releases.insert(
            release_id.clone(),
            Release {
                id: release_id.clone(),
                app_id: Some(app_id.clone()),
                artifacts: vec![],
                env: Default::default(),
                meta: Default::default(),
                processes: BTreeMap::from([("web".to_owned(), web), ("worker".to_owned(), worker)]),
                created_at: String::new(),
            },
        );
        // A tenth of the apps want SSD hosts for web; with `blocked_every`, some want a tag
        // no host has.
        let mut tags = BTreeMap::new();
        if a % 10 == 0 {
            tags.insert(
                "web".to_owned(),
                BTreeMap::from([("disk".to_owned(), "ssd".to_owned())]),
            );
        }
        if blocked_every.is_some_and(|n| a % n == 1) {
            tags.insert(
                "web".to_owned(),
                BTreeMap::from([("gpu".to_owned(), "yes".to_owned())]),
            );
        }
        formations.push(Formation {
            app: app_id,
            release: release_id,
            processes: BTreeMap::from([("web".to_owned(), 3), ("worker".to_owned(), 1)]),
            tags,
            created_at: String::new(),
            updated_at: String::new(),
        });
    }
    Cluster {
        formations,
        apps,
        releases,
        hosts,
    }
}

fn plan(cluster: &Cluster, jobs: &[Job], hosts: &[Host]) -> Plan {
    let mut n = 0u64;
    reconcile::plan(
        &State {
            formations: &cluster.formations,
            apps: &cluster.apps,
            releases: &cluster.releases,
            jobs,
            hosts,
            now_ms: 1_000_000,
        },
        &mut || {
            n += 1;
            format!("job-{n:08}")
        },
        "2026-01-01T00:00:00Z",
    )
}

/// The jobs of a cold pass, placed and up: the steady state.
fn placed(cluster: &Cluster) -> Vec<Job> {
    let mut jobs = plan(cluster, &[], &cluster.hosts).start;
    for job in &mut jobs {
        job.state = JobState::Up;
        job.up_at_ms = Some(1);
    }
    jobs
}

fn bench(c: &mut Criterion) {
    let all = cluster(None);
    let steady = placed(&all);
    // The steady state really is steady.
    let again = plan(&all, &steady, &all.hosts);
    assert!(again.start.is_empty() && again.stop.is_empty() && again.forget.is_empty());
    let mut churned = steady.clone();
    for (i, job) in churned.iter_mut().enumerate() {
        if i % 20 == 0 {
            job.state = JobState::Crashed;
            job.ended_at_ms = Some(999_000);
        }
    }
    let fewer_hosts = &all.hosts[1..];
    let blocking = cluster(Some(10));

    eprintln!(
        "simulation: {APPS} apps/formations (web=3 worker=1; a tenth tagged, one in 50 omni), \
         {HOSTS} hosts; {} jobs in the steady state",
        steady.len()
    );
    let mut group = c.benchmark_group("reconcile");
    group.measurement_time(Duration::from_secs(5));
    group.sample_size(30);
    group.throughput(Throughput::Elements(APPS as u64));
    group.bench_function(BenchmarkId::new("steady", APPS), |b| {
        b.iter(|| black_box(plan(&all, black_box(&steady), &all.hosts)))
    });
    group.bench_function(BenchmarkId::new("cold", APPS), |b| {
        b.iter(|| black_box(plan(&all, black_box(&[]), &all.hosts)))
    });
    group.bench_function(BenchmarkId::new("churn", APPS), |b| {
        b.iter(|| black_box(plan(&all, black_box(&churned), fewer_hosts)))
    });
    group.bench_function(BenchmarkId::new("blocked", APPS), |b| {
        b.iter(|| black_box(plan(&blocking, black_box(&[]), &blocking.hosts)))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
