//! Route table micro benchmarks: lookups at 10, 10k and 100k routes, and what one route change
//! costs on the path the router really takes (parse the store value, edit the private table,
//! publish a snapshot), at 10k and 100k routes to show that it is incremental.
//!
//! `cargo bench -p flynn-benches --bench table`

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use flynn_router::metrics::Metrics;
use flynn_router::sync::TableWriter;
use flynn_router::table::{RouteEntry, Table};
use flynn_store::types::{HttpRoute, Route};
use flynn_store::{KeyValue, Keys, Listing};

/// Paths of the path-routed domains, `/` first (a path route needs one).
const SITE_PATHS: [&str; 5] = ["/", "/api/", "/api/v1/", "/api/v2/", "/static/"];
/// Routes per group: one exact domain, one wildcard, and a domain with every `SITE_PATHS`.
const GROUP: usize = 2 + SITE_PATHS.len();
/// Hosts rotated through per lookup benchmark, so that a big table is not read from one hot line.
const PROBES: usize = 1024;

/// Route number `i` of a table: group `i / GROUP` holds `app-G.example.com`,
/// `*.zone-G.example.com` and `site-G.example.com` with each of `SITE_PATHS`.
fn nth_route(i: usize) -> HttpRoute {
    let (g, k) = (i / GROUP, i % GROUP);
    let id = format!("http-{i}");
    let service = format!("svc-{}", g % 1000);
    match k {
        0 => HttpRoute::new(&id, &format!("app-{g}.example.com"), "/", &service),
        1 => HttpRoute::new(&id, &format!("*.zone-{g}.example.com"), "/", &service),
        _ => HttpRoute::new(
            &id,
            &format!("site-{g}.example.com"),
            SITE_PATHS[k - 2],
            &service,
        ),
    }
}

fn route_json(i: usize, service: &str) -> Vec<u8> {
    let mut r = nth_route(i);
    r.service = service.to_owned();
    serde_json::to_vec(&Route::Http(r)).expect("route serialises")
}

/// A route index past the first `n`, on a new exact domain.
fn fresh_index(n: usize) -> usize {
    (n / GROUP + 1) * GROUP
}

fn route_kv(keys: &Keys, i: usize, service: &str, revision: i64) -> KeyValue {
    KeyValue {
        key: keys.route(&format!("http-{i}")),
        value: route_json(i, service),
        create_revision: revision,
        mod_revision: revision,
        lease: None,
    }
}

fn table_of(n: usize) -> Table {
    let mut table = Table::default();
    for i in 0..n {
        let entry = RouteEntry::from_stored(&format!("http-{i}"), nth_route(i)).expect("valid");
        table.upsert_route(entry);
    }
    assert_eq!(table.route_count(), n);
    table
}

/// Groups that exist completely in a table of `n` routes, spread over the whole table.
fn probe_groups(n: usize) -> Vec<usize> {
    let groups = (n / GROUP).max(1);
    (0..PROBES).map(|p| (p * 7919) % groups).collect()
}

struct Probe {
    host: Vec<u8>,
    path: Vec<u8>,
    expect: Option<String>,
}

fn probes(n: usize, make: impl Fn(usize) -> (String, String, Option<String>)) -> Vec<Probe> {
    probe_groups(n)
        .into_iter()
        .map(|g| {
            let (host, path, expect) = make(g);
            Probe {
                host: host.into_bytes(),
                path: path.into_bytes(),
                expect,
            }
        })
        .collect()
}

fn lookups(c: &mut Criterion) {
    let mut group = c.benchmark_group("lookup");
    group.throughput(Throughput::Elements(1));
    for n in [10, 10_000, 100_000] {
        let table = table_of(n);
        // For 10 routes group 0 is complete: app-0, *.zone-0, site-0 with all paths.
        let kinds: [(&str, Vec<Probe>); 4] = [
            (
                "exact",
                probes(n, |g| {
                    (
                        format!("app-{g}.example.com"),
                        "/index.html".into(),
                        Some(format!("http-{}", g * GROUP)),
                    )
                }),
            ),
            (
                "wildcard",
                probes(n, |g| {
                    (
                        format!("a.b.zone-{g}.example.com"),
                        "/".into(),
                        Some(format!("http-{}", g * GROUP + 1)),
                    )
                }),
            ),
            (
                "path_longest_prefix",
                probes(n, |g| {
                    (
                        format!("site-{g}.example.com"),
                        "/api/v1/users/42?expand=1".into(),
                        // SITE_PATHS[2] is "/api/v1/".
                        Some(format!("http-{}", g * GROUP + 4)),
                    )
                }),
            ),
            (
                "miss",
                probes(n, |g| {
                    (format!("www.nothing-{g}.example.org"), "/".into(), None)
                }),
            ),
        ];
        for (kind, probes) in &kinds {
            for p in probes {
                let got = table.lookup(&p.host, &p.path).map(|r| r.id.to_string());
                assert_eq!(
                    got,
                    p.expect,
                    "{kind} {:?}",
                    String::from_utf8_lossy(&p.host)
                );
            }
            group.bench_with_input(BenchmarkId::new(*kind, n), probes, |b, probes| {
                let mut i = 0;
                b.iter(|| {
                    let p = &probes[i % PROBES];
                    i += 1;
                    black_box(table.lookup(black_box(&p.host), black_box(&p.path)));
                })
            });
        }
    }
    group.finish();
}

fn writer_with(n: usize) -> (TableWriter, Arc<ArcSwap<Table>>) {
    let keys = Keys::default();
    let shared = Arc::new(ArcSwap::from_pointee(Table::default()));
    let mut writer = TableWriter::new(keys.clone(), shared.clone(), Arc::new(Metrics::new()));
    let listing = Listing {
        kvs: (0..n).map(|i| route_kv(&keys, i, "web", 1)).collect(),
        revision: 1,
    };
    writer.reset_routes(&listing);
    writer.publish();
    assert_eq!(shared.load().route_count(), n);
    (writer, shared)
}

fn updates(c: &mut Criterion) {
    let keys = Keys::default();
    let mut group = c.benchmark_group("update");
    group.throughput(Throughput::Elements(1));
    for n in [10_000, 100_000] {
        // The bare table edit: clone the published snapshot (O(1)) and insert a new route.
        let base = table_of(n);
        let fresh = RouteEntry::from_stored("http-new", nth_route(fresh_index(n))).expect("valid");
        group.bench_function(BenchmarkId::new("clone_and_insert", n), |b| {
            b.iter_batched(
                || (base.clone(), fresh.clone()),
                |(mut table, entry)| {
                    table.upsert_route(entry);
                    table
                },
                BatchSize::SmallInput,
            )
        });

        // What the router does for one watch event: parse the value, edit its private table,
        // publish a snapshot (ArcSwap store; the previous snapshot is freed). Each iteration
        // changes the route's service, so every one is a real edit.
        let (mut writer, shared) = writer_with(n);
        let existing = n / 2;
        let kvs = [
            route_kv(&keys, existing, "web-a", 2),
            route_kv(&keys, existing, "web-b", 3),
        ];
        let mut flip = 0usize;
        group.bench_function(BenchmarkId::new("writer_update_and_publish", n), |b| {
            b.iter(|| {
                flip += 1;
                writer.put_route(&kvs[flip % 2]);
                writer.publish();
            })
        });
        assert_eq!(shared.load().route_count(), n);

        // A new route comes and goes: put + publish, delete + publish (two snapshots).
        let added = route_kv(&keys, fresh_index(n), "web", 4);
        group.bench_function(BenchmarkId::new("writer_add_delete_2x_publish", n), |b| {
            b.iter(|| {
                writer.put_route(&added);
                writer.publish();
                writer.delete_route(&added.key, 5);
                writer.publish();
            })
        });
        assert_eq!(shared.load().route_count(), n);
    }
    group.finish();

    // The CPU side of a cold start: every route listed at once into an empty table.
    let mut group = c.benchmark_group("sync");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    let n = 100_000;
    let listing = Listing {
        kvs: (0..n).map(|i| route_kv(&keys, i, "web", 1)).collect(),
        revision: 1,
    };
    group.bench_function(BenchmarkId::new("reset_routes_and_publish", n), |b| {
        b.iter_batched(
            || {
                let shared = Arc::new(ArcSwap::from_pointee(Table::default()));
                TableWriter::new(keys.clone(), shared, Arc::new(Metrics::new()))
            },
            |mut writer| {
                writer.reset_routes(&listing);
                writer.publish();
                writer
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(benches, lookups, updates);
criterion_main!(benches);
