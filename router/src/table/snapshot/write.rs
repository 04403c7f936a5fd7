//! Writing a table in the snapshot format (see the parent module).

use std::collections::HashMap;
use std::io::{self, Write};
use std::sync::Arc;

use flynn_store::types::{BackendProtocol, ProxyProtocol};

use super::{
    Meta, CATCH_ALL, END, END_OF_BODY, EXACT, MAGIC, META, NAMES, SECTION, SERVICES, TCP, TRAILER,
    VERSION, WILDCARD,
};
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
    out.block(META, &buf)?;

    // The names before the routes that use them, so that a reader decodes sections as they
    // come: one pass over the routes to number them.
    let exact = non_empty(EXACT, &table.exact);
    let wildcard = non_empty(WILDCARD, &table.wildcard);
    let mut names = Names::default();
    let groups = exact
        .iter()
        .chain(&wildcard)
        .flat_map(|(_, _, set)| set.iter().map(ByDomain::routes))
        .chain(std::iter::once(&table.catch_all[..]));
    for routes in groups {
        for route in routes {
            names.index(&route.path);
            names.index(&route.service);
            if let Some(cert) = &route.certificate_id {
                names.index(cert);
            }
        }
    }
    buf.clear();
    put_varint(&mut buf, names.list.len() as u64);
    for name in &names.list {
        put_str(&mut buf, name);
    }
    out.block(NAMES, &buf)?;

    for (kind, shard, set) in exact.into_iter().chain(wildcard) {
        buf.clear();
        buf.push(kind);
        put_varint(&mut buf, shard as u64);
        put_varint(&mut buf, set.len() as u64);
        for group in set {
            put_group(&mut buf, group.routes(), &mut names);
        }
        out.block(SECTION, &buf)?;
    }
    if !table.catch_all.is_empty() {
        buf.clear();
        buf.push(CATCH_ALL);
        put_varint(&mut buf, 0);
        put_varint(&mut buf, 1);
        put_group(&mut buf, &table.catch_all, &mut names);
        out.block(SECTION, &buf)?;
    }

    buf.clear();
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
    }
    out.block(TCP, &buf)?;

    buf.clear();
    put_varint(&mut buf, table.services.len() as u64);
    for (name, service) in &table.services {
        put_str(&mut buf, name);
        put_varint(&mut buf, service.backends().len() as u64);
        for backend in service.backends() {
            put_str(&mut buf, &backend.id);
            put_str(&mut buf, &backend.addr.to_string());
            put_i64(&mut buf, backend.create_revision);
        }
    }
    out.block(SERVICES, &buf)?;
    out.block(END_OF_BODY, &[])?;
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
pub(super) struct Body<W: Write> {
    out: W,
    crc: crc32fast::Hasher,
    len: u64,
}

impl<W: Write> Body<W> {
    pub(super) fn new(mut out: W) -> io::Result<Body<W>> {
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

    /// One block: its tag, its length, its bytes.
    pub(super) fn block(&mut self, tag: u8, data: &[u8]) -> io::Result<()> {
        self.bytes(&[tag])?;
        self.bytes(&(data.len() as u64).to_le_bytes())?;
        self.bytes(data)
    }

    pub(super) fn finish(mut self) -> io::Result<u64> {
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
