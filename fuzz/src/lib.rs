//! The bodies of the fuzz targets, as plain functions. The cargo-fuzz binaries in
//! `fuzz_targets/` call them with generated inputs; `router/tests/fuzz_corpus.rs` includes this
//! file and calls them with the committed corpus (`fuzz/corpus/<target>/*`) in the normal test
//! run, on stable Rust.
//!
//! They panic only when an invariant breaks. A value that does not parse, or a route the table
//! refuses, is a normal outcome.

use std::collections::BTreeMap;

use flynn_router::table::host::HostBuf;
use flynn_router::table::{RouteEntry, Table};
use flynn_store::types::{Certificate, HttpRoute, HttpRouteRef, Instance, Route};

#[path = "differential.rs"]
mod differential;
pub use differential::h1_differential;

/// Serialises a parsed value and parses it back as the same type.
macro_rules! round_trip {
    ($value:expr, $ty:ty) => {{
        let json = serde_json::to_vec(&$value).expect("a parsed value serialises");
        serde_json::from_slice::<$ty>(&json).expect("a serialised value parses back")
    }};
}

/// `route_json`: bytes as the store value of a route, a certificate and an instance. Whatever
/// parses survives a round trip; an HTTP route the table accepts is normalised as documented
/// on [`RouteEntry`].
pub fn route_json(data: &[u8]) {
    // The router's fast reader of HTTP routes reads a value as the full reader does, or not at all.
    if let Some(fast) = HttpRouteRef::parse(data) {
        match serde_json::from_slice::<Route>(data) {
            Ok(Route::Http(slow)) => {
                assert_eq!(fast.domain, slow.domain);
                assert_eq!(fast.path, slow.path);
                assert_eq!(fast.service, slow.service);
                assert_eq!(
                    fast.certificate_id.as_deref(),
                    slow.certificate_id.as_deref()
                );
                assert_eq!(
                    (
                        fast.sticky,
                        fast.leader,
                        fast.drain_backends,
                        fast.disable_keep_alives
                    ),
                    (
                        slow.sticky,
                        slow.leader,
                        slow.drain_backends,
                        slow.disable_keep_alives
                    )
                );
                assert_eq!(fast.backend_protocol, slow.backend_protocol);
            }
            other => panic!("the fast reader took a value the full one reads as {other:?}"),
        }
    }
    if let Ok(route) = serde_json::from_slice::<Route>(data) {
        assert_eq!(round_trip!(route, Route), route);
        if let Route::Http(http) = route {
            if let Ok(entry) = RouteEntry::from_stored(&http.id, http.clone()) {
                check_entry(&entry, &http);
            }
        }
    }
    if let Ok(cert) = serde_json::from_slice::<Certificate>(data) {
        assert!(round_trip!(cert, Certificate) == cert);
    }
    if let Ok(instance) = serde_json::from_slice::<Instance>(data) {
        assert_eq!(round_trip!(instance, Instance), instance);
    }
}

fn check_entry(entry: &RouteEntry, stored: &HttpRoute) {
    assert_eq!(entry.id, stored.id);
    assert_eq!(entry.service, stored.service);
    assert!(!entry.service.is_empty());
    assert!(!entry.domain.is_empty());
    assert_eq!(&*entry.domain, entry.domain.to_ascii_lowercase());
    let bare = entry.domain.strip_prefix("*.").unwrap_or(&entry.domain);
    assert!(
        &*entry.domain == "*" || !bare.contains('*'),
        "domain {:?}: a `*` other than a leading `*.` or the catch-all",
        entry.domain
    );
    assert!(entry.path.starts_with('/') && entry.path.ends_with('/'));
    assert!(entry.path == stored.path || entry.path == format!("{}/", stored.path));
    assert_eq!(
        (entry.sticky, entry.leader, entry.drain_backends),
        (stored.sticky, stored.leader, stored.drain_backends)
    );
    assert_eq!(entry.backend_protocol, stored.backend_protocol);
}

/// `host_match`: a script of table edits and lookups, one per line:
///
/// ```text
/// +I DOMAIN PATH   upsert route I (one byte) with that domain and path (default `/`)
/// -I               remove route I
/// ?HOST PATH       look up a raw Host header value and request target
/// ```
///
/// Every lookup must agree with a naive model of the documented matching rules (exact host,
/// then wildcards from the most specific parent, then the catch-all; the longest path prefix
/// on a `/` boundary within a domain, ties to the smallest id), and ignore ASCII case, a port
/// and one trailing dot in the host.
pub fn host_match(data: &[u8]) {
    let mut table = Table::default();
    let mut model: BTreeMap<String, RouteEntry> = BTreeMap::new();
    for line in data.split(|&b| b == b'\n') {
        match line.split_first() {
            Some((b'+', rest)) => {
                let Some((&id, rest)) = rest.split_first() else {
                    continue;
                };
                let id = format!("{id:02x}");
                let (domain, path) = split_once(rest.strip_prefix(b" ").unwrap_or(rest));
                let route: HttpRoute = serde_json::from_value(serde_json::json!({
                    "id": id,
                    "domain": String::from_utf8_lossy(domain),
                    "path": if path.is_empty() { "/".into() } else { String::from_utf8_lossy(path) },
                    "service": "s",
                }))
                .expect("a route built from strings");
                match RouteEntry::from_stored(&id, route) {
                    Ok(entry) => {
                        model.insert(id, entry.clone());
                        table.upsert_route(entry);
                    }
                    // The router keeps the last good version; so does the model.
                    Err(_) => continue,
                }
            }
            Some((b'-', rest)) => {
                let Some(&id) = rest.first() else {
                    continue;
                };
                let id = format!("{id:02x}");
                assert_eq!(table.remove_route(&id), model.remove(&id).is_some());
            }
            Some((b'?', rest)) => {
                let (host, path) = split_once(rest);
                check_lookup(&table, &model, host, path);
            }
            _ => {}
        }
    }

    assert_eq!(table.route_count(), model.len());
    for (id, entry) in &model {
        assert_eq!(table.route(id).map(|r| r.as_ref()), Some(entry));
        // A route answers for its own domain and path, when a Host header can name that
        // domain (no port in it, short enough) and the path has no query or fragment in it.
        let host = match entry.domain.strip_prefix("*.") {
            Some(parent) => format!("x.{parent}"),
            None if &*entry.domain == "*" => "catch-all.test".to_owned(),
            None => entry.domain.to_string(),
        };
        let nameable = HostBuf::new(host.as_bytes()).is_some_and(|h| h.as_str() == host);
        if nameable && !entry.path.contains(['?', '#']) {
            let found = check_lookup(&table, &model, host.as_bytes(), entry.path.as_bytes());
            assert!(found.is_some(), "route {id} is unreachable: {entry:?}");
        }
    }
}

fn split_once(line: &[u8]) -> (&[u8], &[u8]) {
    match line.iter().position(|&b| b == b' ') {
        Some(space) => (&line[..space], &line[space + 1..]),
        None => (line, &[]),
    }
}

/// Looks `host` and `path` up, checks the answer against the model and against variants of the
/// host that must not change it; returns the route id found.
fn check_lookup(
    table: &Table,
    model: &BTreeMap<String, RouteEntry>,
    host: &[u8],
    path: &[u8],
) -> Option<String> {
    let lookup = |host: &[u8]| table.lookup(host, path).map(|r| r.id.to_string());
    let found = lookup(host);
    assert_eq!(
        found,
        expected(model, host, path),
        "host {:?} path {:?}",
        String::from_utf8_lossy(host),
        String::from_utf8_lossy(path)
    );
    assert_eq!(
        lookup(&host.to_ascii_uppercase()),
        found,
        "upper-cased host"
    );
    assert_eq!(
        lookup(&host.to_ascii_lowercase()),
        found,
        "lower-cased host"
    );
    if !host.contains(&b':') && !host.starts_with(b"[") {
        assert_eq!(
            lookup(&[host, b":8080"].concat()),
            found,
            "host with a port"
        );
        if !host.ends_with(b".") {
            assert_eq!(lookup(&[host, b"."].concat()), found, "host with a dot");
        }
    }
    found
}

/// The documented matching rules, the slow and obvious way.
fn expected(model: &BTreeMap<String, RouteEntry>, host: &[u8], target: &[u8]) -> Option<String> {
    let host = HostBuf::new(host)?;
    let host = host.as_str();
    let path = match target.iter().position(|&b| b == b'?' || b == b'#') {
        Some(end) => &target[..end],
        None => target,
    };
    let best_in = |domain: &str| {
        model
            .values()
            .filter(|r| &*r.domain == domain)
            .filter(|r| {
                let prefix = r.path.as_bytes();
                path.starts_with(prefix) || [path, b"/"].concat() == prefix
            })
            // Longest path; among equals, the smallest id.
            .max_by(|a, b| a.path.len().cmp(&b.path.len()).then(b.id.cmp(&a.id)))
            .map(|r| r.id.to_string())
    };
    let is_wildcard = host == "*" || host.starts_with("*.");
    if !is_wildcard {
        if let Some(id) = best_in(host) {
            return Some(id);
        }
    }
    for (i, _) in host.match_indices('.') {
        if let Some(id) = best_in(&format!("*.{}", &host[i + 1..])) {
            return Some(id);
        }
    }
    best_in("*")
}

/// `proxy_header`: bytes as the start of a connection from a trusted load balancer. The parser
/// never panics, a complete header never claims more bytes than it was given, an incomplete one
/// always asks for more, the answer does not depend on what follows the header, and a header
/// the router writes for the addresses it parsed parses back to the same addresses.
pub fn proxy_header(data: &[u8]) {
    use flynn_router::proxy_protocol::{encode_v1, encode_v2, parse, Header, Parsed};
    match parse(data) {
        Ok(Parsed::Complete { header, len }) => {
            assert!(len <= data.len(), "claimed {len} of {} bytes", data.len());
            assert_eq!(parse(&data[..len]), Ok(Parsed::Complete { header, len }));
            let mut longer = data[..len].to_vec();
            longer.extend_from_slice(b"GET / HTTP/1.1\r\n");
            assert_eq!(parse(&longer), Ok(Parsed::Complete { header, len }));
            if let Header::Proxied {
                source,
                destination,
            } = header
            {
                for encoded in [
                    encode_v1(source, destination),
                    encode_v2(source, destination),
                ] {
                    match parse(&encoded) {
                        Ok(Parsed::Complete {
                            header:
                                Header::Proxied {
                                    source: s,
                                    destination: d,
                                },
                            len,
                        }) => {
                            assert_eq!(len, encoded.len());
                            assert_eq!(s.port(), source.port());
                            assert_eq!(d.port(), destination.port());
                        }
                        other => panic!("our own header did not parse: {other:?}"),
                    }
                }
            }
        }
        Ok(Parsed::Incomplete { needed }) => {
            assert!(
                needed > data.len(),
                "asked for {needed} with {} bytes",
                data.len()
            );
            assert!(needed <= 16 + 2048, "asked for {needed} bytes");
        }
        Err(_) => {}
    }
}

/// `h1_messages`: bytes as the start of what a client sends the HTTP/1.1 fast path, and as what a
/// backend answers it. Nothing panics. A request head the fast path takes is found again in any
/// longer input, and the head it sends upstream is one complete HTTP/1.1 request with the same
/// method, target and Host, and none of the hop-by-hop headers. A response head it passes on is
/// one complete response with the same status. A chunked body's end is found at the same place
/// however the bytes are split.
pub fn h1_messages(data: &[u8]) {
    use flynn_router::proxy::h1::{request, response};
    use flynn_router::proxy::headers::Origin;

    if let request::Parse::Head(head) = request::parse(data) {
        assert!(head.len <= data.len());
        assert!(head.host.end <= head.len && head.path.end <= head.len);
        let mut longer = data.to_vec();
        longer.extend_from_slice(b"GET / HTTP/1.1\r\n");
        assert_eq!(request::parse(&longer), request::Parse::Head(head.clone()));

        let origin = Origin {
            client_ip: Some(std::net::IpAddr::from([10, 0, 0, 1])),
            proto: "http",
            port: Some(80),
        };
        let mut out = Vec::new();
        let rewrite = request::Rewrite {
            close_backend: true,
            sticky: true,
        };
        request::write_upstream(data, &head, &origin, rewrite, &mut out);
        let mut slots = [httparse::EMPTY_HEADER; 128];
        let mut sent = httparse::Request::new(&mut slots);
        assert_eq!(
            sent.parse(&out),
            Ok(httparse::Status::Complete(out.len())),
            "{:?}",
            String::from_utf8_lossy(&out)
        );
        assert_eq!(sent.version, Some(1));
        assert_eq!(sent.path.map(str::as_bytes), Some(&data[head.path.clone()]));
        let hosts: Vec<&[u8]> = sent
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("host"))
            .map(|h| h.value)
            .collect();
        assert_eq!(hosts, [&data[head.host.clone()]]);
        for h in sent.headers.iter() {
            let hop = ["keep-alive", "proxy-connection", "te", "trailer", "upgrade"];
            assert!(
                !hop.iter().any(|n| h.name.eq_ignore_ascii_case(n)),
                "{}",
                h.name
            );
            if h.name.eq_ignore_ascii_case("connection") {
                assert_eq!(h.value, b"close");
            }
        }
    }

    let mut out = Vec::new();
    match response::parse(
        data,
        false,
        true,
        b"Sun, 29 Nov 2026 18:00:00 GMT",
        &mut out,
    ) {
        response::Parse::Final(response::Head { len, status, .. }) => {
            assert!(len <= data.len());
            check_passed_on(&out, status);
        }
        response::Parse::Interim(len) => {
            assert!(len <= data.len());
            let mut slots = [httparse::EMPTY_HEADER; 128];
            let mut passed = httparse::Response::new(&mut slots);
            assert_eq!(
                passed.parse(&out),
                Ok(httparse::Status::Complete(out.len()))
            );
        }
        response::Parse::Partial | response::Parse::Bad(_) => {}
    }

    let mut whole = response::Chunks::default();
    let whole_end = whole.advance(data);
    for split in [data.len() / 3, data.len() / 2] {
        let mut chunks = response::Chunks::default();
        let Ok(first) = chunks.advance(&data[..split]) else {
            assert!(whole_end.is_err() || !whole.done(), "split at {split}");
            continue;
        };
        let rest = chunks.advance(&data[first..]);
        if let (Ok(whole_end), true) = (whole_end, whole.done()) {
            assert_eq!(rest.map(|n| first + n), Ok(whole_end), "split at {split}");
            assert!(chunks.done());
        }
    }
}

fn check_passed_on(out: &[u8], status: u16) {
    let mut slots = [httparse::EMPTY_HEADER; 160];
    let mut passed = httparse::Response::new(&mut slots);
    assert_eq!(
        passed.parse(out),
        Ok(httparse::Status::Complete(out.len())),
        "{:?}",
        String::from_utf8_lossy(out)
    );
    assert_eq!((passed.version, passed.code), (Some(1), Some(status)));
    let connection: Vec<&[u8]> = passed
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
        .map(|h| h.value)
        .collect();
    assert_eq!(connection, [&b"keep-alive"[..]]);
}
