use std::fs;
use std::net::SocketAddr;
use std::sync::Arc;

use flynn_store::types::{BackendProtocol, HttpRoute, Instance, ProxyProtocol, TcpRoute};

use super::write::{put_group, put_i64, put_str, put_varint, Body, Names};
use super::*;
use crate::table::shards::{shard_of, SHARDS};
use crate::table::RouteEntry;

fn uuid_id(i: usize) -> String {
    format!("http-{:08x}-0000-4000-8000-{:012x}", i * 7919, i)
}

/// A table with a bit of everything: compact and text ids, exact, wildcard and catch-all
/// domains, several paths on a domain, flags, protocols, certificates, TCP routes, instances.
fn sample(extra: usize) -> Table {
    let mut t = Table::default();
    let mut add = |route: HttpRoute| {
        let entry = RouteEntry::from_stored(&route.id.clone(), route).expect("valid");
        t.upsert_route(entry);
    };
    add(HttpRoute::new(&uuid_id(1), "a.example.com", "/", "web"));
    add(HttpRoute::new(&uuid_id(2), "a.example.com", "/api", "api"));
    add(HttpRoute::new("r-text", "b.example.com", "/", "web"));
    add(HttpRoute::new("http-UPPER", "*.example.com", "/", "wild"));
    add(HttpRoute::new(
        &uuid_id(3),
        "*.b.example.com",
        "/x/",
        "deeper",
    ));
    add(HttpRoute::new(&uuid_id(4), "*", "/", "any"));
    add(HttpRoute::new(&uuid_id(5), "*", "/static", "files"));
    let mut special = HttpRoute::new(&uuid_id(6), "tls.example.com", "/", "secure");
    special.certificate_id = Some("cert-1".into());
    special.sticky = true;
    special.leader = true;
    special.drain_backends = false;
    special.disable_keep_alives = true;
    special.backend_protocol = BackendProtocol::H2;
    add(special);
    let mut grpc = HttpRoute::new(&uuid_id(7), "grpc.example.com", "/", "grpc");
    grpc.backend_protocol = BackendProtocol::H2c;
    add(grpc);
    for i in 0..extra {
        add(HttpRoute::new(
            &uuid_id(100 + i),
            &format!("r-{i}.bulk.test"),
            "/",
            &format!("svc-{}", i % 50),
        ));
    }
    t.upsert_tcp_route(TcpRoute {
        id: "tcp-1".into(),
        port: 3000,
        service: "db".into(),
        leader: true,
        proxy_protocol: Some(ProxyProtocol::V2),
        app_id: Some("app".into()),
    });
    t.upsert_tcp_route(TcpRoute {
        id: "tcp-2".into(),
        port: 3001,
        service: "cache".into(),
        leader: false,
        proxy_protocol: None,
        app_id: None,
    });
    for (service, id, port, revision) in [
        ("web", "i1", 9001, 10),
        ("web", "i2", 9002, 5),
        ("api", "i1", 9003, 7),
    ] {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let instance = Instance {
            id: id.into(),
            addr,
            meta: Default::default(),
        };
        t.upsert_instance(service, id, &instance, revision);
    }
    t
}

fn meta() -> Meta {
    Meta {
        prefix: "/flynn".into(),
        store: "cluster-1".into(),
        routes: 1234,
        services: 1200,
    }
}

fn bytes(table: &Table) -> Vec<u8> {
    let mut out = Vec::new();
    let size = write(table, &meta(), &mut out).expect("write");
    assert_eq!(size, out.len() as u64);
    out
}

/// Everything requests and edits see, in a comparable form.
fn contents(t: &Table) -> Vec<String> {
    let mut out: Vec<String> = t
        .route_ids()
        .map(|id| match t.route_by_id(&id) {
            Some(r) => format!("{r:?}"),
            None => format!("tcp {id}"),
        })
        .collect();
    out.extend(t.tcp_routes().map(|r| format!("{r:?}")));
    for name in t.service_names() {
        if let Some(service) = t.service(name) {
            for b in service.backends() {
                out.push(format!("{name} {} {} {}", b.id, b.addr, b.create_revision));
            }
        }
    }
    out.push(format!(
        "{} routes {} instances",
        t.route_count(),
        t.instance_count()
    ));
    out.sort();
    out
}

fn hit(t: &Table, host: &str, path: &str) -> Option<String> {
    t.lookup(host.as_bytes(), path.as_bytes())
        .map(|r| format!("{} {}", r.id, r.service))
}

#[test]
fn a_table_reads_back_as_it_was_written() {
    let table = sample(2000);
    let written = bytes(&table);
    for threads in [1, 2, 7] {
        let (back, m) = read_with(&written, threads).expect("read");
        assert_eq!(m, meta());
        assert_eq!(contents(&back), contents(&table));
        for (host, path) in [
            ("a.example.com", "/"),
            ("a.example.com", "/api/v1"),
            ("A.Example.com:80", "/api"),
            ("b.example.com", "/"),
            ("x.example.com", "/"),
            ("q.b.example.com", "/x/y"),
            ("q.b.example.com", "/"),
            ("other.org", "/static/a.css"),
            ("other.org", "/"),
            ("tls.example.com", "/"),
            ("r-1999.bulk.test", "/"),
            ("r-2000.bulk.test", "/"),
        ] {
            assert_eq!(
                hit(&back, host, path),
                hit(&table, host, path),
                "{host}{path}"
            );
        }
        // Written again and read back: still the same (the order of the sets' entries
        // differs from process to process, and so may the bytes).
        let (again, _) = read_with(&bytes(&back), threads).expect("read");
        assert_eq!(contents(&again), contents(&table));
    }
}

#[test]
fn a_loaded_table_takes_edits() {
    let (mut t, _) = read(&bytes(&sample(100))).expect("read");
    t.remove_route(&uuid_id(1));
    // The wildcard takes over.
    assert_eq!(
        hit(&t, "a.example.com", "/"),
        Some("http-UPPER wild".into())
    );
    assert_eq!(
        hit(&t, "a.example.com", "/api/"),
        Some(format!("{} api", uuid_id(2)))
    );
    t.upsert_route(
        RouteEntry::from_stored("n", HttpRoute::new("n", "new.test", "/", "web")).expect("ok"),
    );
    assert_eq!(hit(&t, "new.test", "/"), Some("n web".into()));
    assert!(t.remove_route("tcp-1"));
    assert!(t.remove_instance("web", "i2"));
    assert_eq!(t.instance_count(), 2);
    // The names are the table's own: a new route shares them.
    let svc = t.route("n").map(|r| r.service.clone()).expect("n");
    let old = t
        .route("r-text")
        .map(|r| r.service.clone())
        .expect("r-text");
    assert!(std::ptr::eq(svc.as_str(), old.as_str()));
}

#[test]
fn an_empty_table_round_trips() {
    let (t, m) = read(&bytes(&Table::default())).expect("read");
    assert_eq!(m, meta());
    assert_eq!((t.route_count(), t.instance_count()), (0, 0));
}

#[test]
fn damage_is_an_error_never_a_panic() {
    let good = bytes(&sample(30));
    // Every truncation.
    for len in 0..good.len() {
        assert!(read(&good[..len]).is_err(), "truncated to {len}");
    }
    // Every single flipped byte.
    for i in 0..good.len() {
        let mut bad = good.clone();
        bad[i] ^= 0x41;
        assert!(read(&bad).is_err(), "byte {i} flipped");
    }
    assert!(matches!(
        read(b"hello world, not a snapshot"),
        Err(SnapshotError::Foreign)
    ));
    assert!(matches!(read(b""), Err(SnapshotError::Truncated)));
    let mut newer = good.clone();
    newer[8..12].copy_from_slice(&(VERSION + 1).to_le_bytes());
    assert!(matches!(read(&newer), Err(SnapshotError::Version(v)) if v == VERSION + 1));
    // A letter of a domain changed: the file still reads, only the checksum tells.
    let mut flipped = good.clone();
    let at = good
        .windows(9)
        .position(|w| w == b"bulk.test")
        .expect("a domain");
    flipped[at] = b'h';
    assert!(matches!(read(&flipped), Err(SnapshotError::Checksum)));
}

/// A snapshot of one route `x.test`, its section claiming `shard`.
fn one_route_in_shard(shard: usize) -> Vec<u8> {
    let mut file = Vec::new();
    let mut out = Body::new(&mut file).expect("write");
    let mut b = Vec::new();
    put_str(&mut b, "/flynn");
    put_str(&mut b, "s");
    put_i64(&mut b, 1);
    put_i64(&mut b, 1);
    out.block(META, &b).expect("write");
    b.clear();
    put_varint(&mut b, 2);
    put_str(&mut b, "/");
    put_str(&mut b, "s");
    out.block(NAMES, &b).expect("write");
    b.clear();
    b.push(EXACT);
    put_varint(&mut b, shard as u64);
    put_varint(&mut b, 1);
    let route = RouteEntry::from_stored("x", HttpRoute::new("x", "x.test", "/", "s")).expect("ok");
    put_group(&mut b, &[Arc::new(route)], &mut Names::default());
    out.block(SECTION, &b).expect("write");
    for tag in [TCP, SERVICES] {
        out.block(tag, &[0]).expect("write");
    }
    out.block(END_OF_BODY, &[]).expect("write");
    out.finish().expect("write");
    file
}

#[test]
fn a_body_that_passes_the_checksum_is_still_checked() {
    let right = shard_of("x.test");
    let (t, _) = read(&one_route_in_shard(right)).expect("the right shard reads");
    assert_eq!(hit(&t, "x.test", "/"), Some("x s".into()));
    // Well-formed bytes with a good checksum, but a domain in a shard it does not hash to.
    let wrong = one_route_in_shard((right + 1) % SHARDS);
    assert!(matches!(read(&wrong), Err(SnapshotError::Corrupt(_))));
}

#[test]
fn saved_atomically_and_privately() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("router.snapshot");
    assert!(load(&path).expect("no file is fine").is_none());
    let table = sample(10);
    let size = save(&path, &table, &meta()).expect("save");
    let file = fs::metadata(&path).expect("saved");
    assert_eq!(file.len(), size);
    assert_eq!(file.permissions().mode() & 0o777, 0o600);
    assert!(!temporary(&path).exists());
    let (back, m) = load(&path).expect("load").expect("a table");
    assert_eq!((contents(&back), m), (contents(&table), meta()));
    // A second save replaces the first.
    save(&path, &Table::default(), &meta()).expect("save");
    let (back, _) = load(&path).expect("load").expect("a table");
    assert_eq!(back.route_count(), 0);
}

#[test]
fn revisions_no_store_has_are_refused() {
    // The mirrors resume from revision + 1 (and watch from it): a negative or the largest
    // revision, even under a valid checksum, must not get that far.
    for (routes, services) in [(-1, 5), (5, -7), (i64::MAX, 5), (5, i64::MAX)] {
        let meta = Meta {
            routes,
            services,
            ..meta()
        };
        let mut out = Vec::new();
        write(&sample(3), &meta, &mut out).expect("write");
        let read = read_from(out.as_slice(), out.len() as u64, 2);
        assert!(
            matches!(read, Err(SnapshotError::Corrupt(_))),
            "revisions {routes}, {services}: {:?}",
            read.map(|(_, m)| m)
        );
    }
}

#[test]
fn a_failed_save_leaves_no_temporary_file() {
    let dir = tempfile::tempdir().expect("dir");
    // A directory (not empty) where the file goes: the write succeeds, the rename fails, as a
    // full disk or a lost permission would fail a save half way.
    let path = dir.path().join("router.snapshot");
    fs::create_dir(&path).expect("dir");
    fs::write(path.join("x"), b"x").expect("write");
    save(&path, &sample(10), &meta()).expect_err("cannot replace a directory");
    assert!(
        !temporary(&path).exists(),
        "a failed save left {} behind",
        temporary(&path).display()
    );
}

/// `cargo test --release -p flynn-router --lib million -- --ignored --nocapture`: how long a
/// million routes take to write and to read back.
#[test]
#[ignore]
fn million_routes_timing() {
    let table = sample(1_000_000);
    let started = std::time::Instant::now();
    let written = bytes(&table);
    let wrote = started.elapsed();
    for threads in [1, 2] {
        let started = std::time::Instant::now();
        let (back, _) = read_with(&written, threads).expect("read");
        println!(
            "{} bytes ({:.0} B/route), written in {wrote:?}, read on {threads} threads in {:?}",
            written.len(),
            written.len() as f64 / back.route_count() as f64,
            started.elapsed()
        );
        assert_eq!(back.route_count(), table.route_count());
    }
}

#[test]
fn a_file_is_newer_only_for_the_same_store_and_prefix_on_both_feeds() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("router.snapshot");
    // No file, or a damaged one: nothing newer there.
    assert!(!holds_newer(&path, &meta()));
    fs::write(&path, b"not a snapshot").expect("write");
    assert!(!holds_newer(&path, &meta()));
    save(&path, &sample(3), &meta()).expect("save");
    assert_eq!(
        read_meta(
            fs::File::open(&path).expect("open"),
            fs::metadata(&path).expect("size").len()
        )
        .expect("meta"),
        meta()
    );
    let with = |routes: i64, services: i64, store: &str| Meta {
        routes,
        services,
        store: store.into(),
        ..meta()
    };
    let m = meta();
    // As new, or newer on both feeds: the file wins.
    assert!(holds_newer(&path, &m));
    assert!(holds_newer(
        &path,
        &with(m.routes - 1, m.services - 1, &m.store)
    ));
    // Ours newer on either feed, or another store or prefix: ours is written.
    assert!(!holds_newer(
        &path,
        &with(m.routes + 1, m.services, &m.store)
    ));
    assert!(!holds_newer(
        &path,
        &with(m.routes, m.services + 1, &m.store)
    ));
    assert!(!holds_newer(&path, &with(m.routes, m.services, "another")));
    assert!(!holds_newer(
        &path,
        &Meta {
            prefix: "/other".into(),
            ..meta()
        }
    ));
}
