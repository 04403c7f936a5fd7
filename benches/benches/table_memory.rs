//! Resident bytes per route of the router's table (same allocator as the router): `N` routes
//! (`TABLE_ROUTES`, default 1,000,000) as a store listing brings them (JSON values through the
//! router's `TableWriter`, in the pages of one listing, as the routes mirror hands them over),
//! ids `http-<uuid>`, 1000 services with one instance each. Prints the resident memory added
//! by the load, per route, and the time the load took.
//!
//! `cargo bench -p flynn-benches --bench table_memory`

use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use flynn_benches::route_id;
use flynn_router::metrics::Metrics;
use flynn_router::sync::TableWriter;
use flynn_router::table::Table;
use flynn_store::mirror::ListPage;
use flynn_store::{KeyValue, Keys, Listing};

/// The router's allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Resident memory in bytes (`/proc/self/statm`).
fn rss() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

const SERVICES: usize = 1000;
const PAGE: usize = 10_000;
/// Pages between two publishes (`TABLE_PUBLISH_EVERY`); 0, the default, publishes once at the
/// end, as the router does with a listing (each publish makes the next edits copy the shards
/// they touch).
static PUBLISH_EVERY: std::sync::LazyLock<usize> = std::sync::LazyLock::new(|| {
    std::env::var("TABLE_PUBLISH_EVERY")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
});

fn main() -> anyhow::Result<()> {
    let n: usize = std::env::var("TABLE_ROUTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let keys = Keys::default();
    let shared = Arc::new(ArcSwap::from_pointee(Table::default()));
    let mut writer = TableWriter::new(keys.clone(), shared.clone(), Arc::new(Metrics::new()));
    let instances: Vec<KeyValue> = (0..SERVICES)
        .map(|s| KeyValue {
            key: keys.instance(&format!("svc-{s}"), "i1"),
            value: format!(r#"{{"id":"i1","addr":"127.0.0.1:{}"}}"#, 10_000 + s).into_bytes(),
            create_revision: 1,
            mod_revision: 1,
            lease: None,
        })
        .collect();
    writer.reset_instances(&Listing {
        kvs: instances,
        revision: 1,
    });
    writer.publish();
    let before = rss();
    let started = Instant::now();
    for start in (0..n).step_by(PAGE) {
        let kvs: Vec<KeyValue> = (start..(start + PAGE).min(n))
            .map(|i| {
                let id = route_id(i);
                let value = format!(
                    r#"{{"id":"{id}","type":"http","domain":"r-{i}.startup.test","path":"/","service":"svc-{}","certificate_id":null,"sticky":false,"leader":false,"drain_backends":true,"app_id":null}}"#,
                    i % SERVICES
                );
                KeyValue {
                    key: keys.route(&id),
                    value: value.into_bytes(),
                    create_revision: 2,
                    mod_revision: 2,
                    lease: None,
                }
            })
            .collect();
        writer.routes_page(ListPage {
            kvs,
            revision: 2,
            first: start == 0,
            last: start + PAGE >= n,
            store: String::new(),
        });
        let every = *PUBLISH_EVERY;
        if every > 0 && (start / PAGE) % every == every - 1 {
            writer.publish();
        }
    }
    writer.publish();
    let loaded = started.elapsed();
    let after = rss();
    let table = shared.load();
    assert_eq!(table.route_count(), n);
    let probe = format!("r-{}.startup.test", n - 1);
    assert!(table.lookup(probe.as_bytes(), b"/").is_some());
    let per_route = (after - before) as f64 / n as f64;
    println!(
        "{n} routes: {:.1} MiB more resident, {per_route:.0} B per route; loaded in {:.2} s ({:.0} ns per route)",
        (after - before) as f64 / (1 << 20) as f64,
        loaded.as_secs_f64(),
        loaded.as_nanos() as f64 / n as f64,
    );
    // Lookups: the time per lookup over every route.
    let started = Instant::now();
    let mut found = 0usize;
    for i in (0..n).step_by(7) {
        let host = format!("r-{i}.startup.test");
        found += usize::from(table.lookup(host.as_bytes(), b"/x").is_some());
    }
    println!(
        "lookup: {:.0} ns each ({found} found)",
        started.elapsed().as_nanos() as f64 / found.max(1) as f64
    );
    Ok(())
}
