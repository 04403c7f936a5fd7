//! Writing a table in the snapshot format (see the parent module).

use std::collections::HashMap;
use std::io::{self, Write};
use std::sync::Arc;

use flynn_store::types::{BackendProtocol, ProxyProtocol};

use super::{Meta, CATCH_ALL, END, EXACT, MAGIC, TRAILER, VERSION, WILDCARD};
use crate::table::shards::{HashSet, Shards};
use crate::table::{ByDomain, Name, RouteEntry, Table};

/// Writes `table` in the snapshot format; returns the bytes written.
pub fn write(table: &Table, meta: &Meta, out: impl Write) -> io::Result<u64> {
    let mut out = Body::new(out)?;
    let mut buf = Vec::with_capacity(1 << 16);
    put_str(&mut buf, &meta.prefix);
    put_str(&mut buf, &meta.store);
    put_i64(&mut buf, meta.routes);
    put_i64(&mut buf, meta.services);

    let exact = non_empty(EXACT, &table.exact);
    let wildcard = non_empty(WILDCARD, &table.wildcard);
    let catch_all = !table.catch_all.is_empty();
    put_varint(
        &mut buf,
        (exact.len() + wildcard.len() + usize::from(catch_all)) as u64,
    );
    let mut names = Names::default();
    let mut section = Vec::new();
    for (kind, shard, set) in exact.into_iter().chain(wildcard) {
        section.clear();
        put_varint(&mut section, set.len() as u64);
        for group in set {
            put_group(&mut section, group.routes(), &mut names);
        }
        put_section(&mut buf, kind, shard, &section);
        out.flush_if_big(&mut buf)?;
    }
    if catch_all {
        section.clear();
        put_varint(&mut section, 1);
        put_group(&mut section, &table.catch_all, &mut names);
        put_section(&mut buf, CATCH_ALL, 0, &section);
    }

    put_varint(&mut buf, names.list.len() as u64);
    for name in &names.list {
        put_str(&mut buf, name);
        out.flush_if_big(&mut buf)?;
    }

    put_varint(&mut buf, table.tcp_routes.len() as u64);
    for route in table.tcp_routes.values() {
        put_str(&mut buf, &route.id);
        buf.extend_from_slice(&route.port.to_le_bytes());
        put_str(&mut buf, &route.service);
        buf.push(u8::from(route.leader));
        buf.push(match route.proxy_protocol {
            None => 0,
            Some(ProxyProtocol::V1) => 1,
            Some(ProxyProtocol::V2) => 2,
        });
        buf.push(u8::from(route.app_id.is_some()));
        if let Some(app) = &route.app_id {
            put_str(&mut buf, app);
        }
        out.flush_if_big(&mut buf)?;
    }

    put_varint(&mut buf, table.services.len() as u64);
    for (name, service) in &table.services {
        put_str(&mut buf, name);
        put_varint(&mut buf, service.backends().len() as u64);
        for backend in service.backends() {
            put_str(&mut buf, &backend.id);
            put_str(&mut buf, &backend.addr.to_string());
            put_i64(&mut buf, backend.create_revision);
        }
        out.flush_if_big(&mut buf)?;
    }
    out.bytes(&buf)?;
    out.finish()
}

/// The shards of `set` that hold something, as sections of `kind`.
fn non_empty(kind: u8, set: &Shards<str, ByDomain>) -> Vec<(u8, usize, &HashSet<ByDomain>)> {
    set.sets()
        .enumerate()
        .filter(|(_, s)| !s.is_empty())
        .map(|(i, s)| (kind, i, s))
        .collect()
}

/// The body's writer: counts and checksums what goes through.
struct Body<W: Write> {
    out: W,
    crc: crc32fast::Hasher,
    len: u64,
}

impl<W: Write> Body<W> {
    fn new(mut out: W) -> io::Result<Body<W>> {
        out.write_all(MAGIC)?;
        out.write_all(&VERSION.to_le_bytes())?;
        Ok(Body {
            out,
            crc: crc32fast::Hasher::new(),
            len: 0,
        })
    }

    fn bytes(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.crc.update(bytes);
        self.len += bytes.len() as u64;
        self.out.write_all(bytes)
    }

    fn flush_if_big(&mut self, buf: &mut Vec<u8>) -> io::Result<()> {
        if buf.len() >= 1 << 16 {
            self.bytes(buf)?;
            buf.clear();
        }
        Ok(())
    }

    fn finish(mut self) -> io::Result<u64> {
        let crc = self.crc.clone().finalize();
        self.out.write_all(&self.len.to_le_bytes())?;
        self.out.write_all(&crc.to_le_bytes())?;
        self.out.write_all(END)?;
        self.out.flush()?;
        Ok((MAGIC.len() + 4 + TRAILER) as u64 + self.len)
    }
}

/// The distinct names of the routes written, in the order first seen.
#[derive(Default)]
pub(super) struct Names {
    index: HashMap<Name, u64>,
    list: Vec<Name>,
}

impl Names {
    pub(super) fn index(&mut self, name: &Name) -> u64 {
        if let Some(&i) = self.index.get(name) {
            return i;
        }
        let i = self.list.len() as u64;
        self.list.push(name.clone());
        self.index.insert(name.clone(), i);
        i
    }
}

pub(super) fn put_section(buf: &mut Vec<u8>, kind: u8, shard: usize, section: &[u8]) {
    buf.push(kind);
    put_varint(buf, shard as u64);
    put_varint(buf, section.len() as u64);
    buf.extend_from_slice(section);
}

/// The routes of one domain (at least one), in the table's order.
pub(super) fn put_group(buf: &mut Vec<u8>, routes: &[Arc<RouteEntry>], names: &mut Names) {
    put_str(buf, routes.first().map_or("", |r| &*r.domain));
    put_varint(buf, routes.len() as u64);
    for route in routes {
        match route.id.uuid_bytes() {
            Some(bytes) => {
                buf.push(0);
                buf.extend_from_slice(bytes);
            }
            None => {
                buf.push(1);
                route.id.with_str(|id| put_str(buf, id));
            }
        }
        put_varint(buf, names.index(&route.path));
        put_varint(buf, names.index(&route.service));
        put_varint(
            buf,
            route
                .certificate_id
                .as_ref()
                .map_or(0, |c| names.index(c) + 1),
        );
        buf.push(
            u8::from(route.sticky)
                | u8::from(route.leader) << 1
                | u8::from(route.drain_backends) << 2
                | u8::from(route.disable_keep_alives) << 3,
        );
        buf.push(match route.backend_protocol {
            BackendProtocol::Http1 => 0,
            BackendProtocol::H2c => 1,
            BackendProtocol::H2 => 2,
        });
    }
}

pub(super) fn put_varint(buf: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        buf.push(value as u8 | 0x80);
        value >>= 7;
    }
    buf.push(value as u8);
}

pub(super) fn put_str(buf: &mut Vec<u8>, text: &str) {
    put_varint(buf, text.len() as u64);
    buf.extend_from_slice(text.as_bytes());
}

pub(super) fn put_i64(buf: &mut Vec<u8>, value: i64) {
    buf.extend_from_slice(&value.to_le_bytes());
}
