//! Reading a table back from the snapshot format (see the parent module), its shards decoded
//! side by side.

use std::net::SocketAddr;
use std::sync::Arc;

use flynn_store::types::{BackendProtocol, ProxyProtocol, TcpRoute};

use super::{Meta, SnapshotError, CATCH_ALL, END, EXACT, MAGIC, TRAILER, VERSION, WILDCARD};
use crate::backend::{Backend, Service};
use crate::table::names::Interner;
use crate::table::shards::{self, shard_of, HashSet, Shards, SHARDS};
use crate::table::{kind, ByDomain, ById, DomainKind, Name, RouteEntry, RouteId, Table};

/// Reads a snapshot, its sections decoded on every CPU.
pub fn read(bytes: &[u8]) -> Result<(Table, Meta), SnapshotError> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    read_with(bytes, threads)
}

/// [`read`] on `threads` threads.
pub fn read_with(bytes: &[u8], threads: usize) -> Result<(Table, Meta), SnapshotError> {
    let head = MAGIC.len() + 4;
    if bytes.len() < head {
        return Err(if MAGIC.starts_with(bytes) {
            SnapshotError::Truncated
        } else {
            SnapshotError::Foreign
        });
    }
    if &bytes[..MAGIC.len()] != MAGIC {
        return Err(SnapshotError::Foreign);
    }
    let mut version = [0; 4];
    version.copy_from_slice(&bytes[MAGIC.len()..head]);
    let version = u32::from_le_bytes(version);
    if version != VERSION {
        return Err(SnapshotError::Version(version));
    }
    let rest = &bytes[head..];
    if rest.len() < TRAILER || &rest[rest.len() - END.len()..] != END {
        return Err(SnapshotError::Truncated);
    }
    let (body, trailer) = rest.split_at(rest.len() - TRAILER);
    let mut t = Reader::new(trailer);
    let len = t.u64()?;
    let crc = t.u32()?;
    if len != body.len() as u64 {
        return Err(SnapshotError::Truncated);
    }
    if crc32fast::hash(body) != crc {
        return Err(SnapshotError::Checksum);
    }

    let mut r = Reader::new(body);
    let meta = Meta {
        prefix: r.str()?.to_owned(),
        store: r.str()?.to_owned(),
        routes: r.i64()?,
        services: r.i64()?,
    };
    let count = r.count()?;
    let mut sections = Vec::with_capacity(count);
    for _ in 0..count {
        let kind = r.u8()?;
        let shard = usize::try_from(r.varint()?).map_err(|_| corrupt("shard"))?;
        let len = r.count()?;
        let data = r.take(len)?;
        if kind > CATCH_ALL || shard >= SHARDS || (kind == CATCH_ALL && shard != 0) {
            return Err(corrupt("section"));
        }
        sections.push(Section { kind, shard, data });
    }
    let interner = Interner::default();
    let count = r.count()?;
    let mut names = Vec::with_capacity(count);
    for _ in 0..count {
        names.push(interner.intern_str(r.str()?));
    }
    let count = r.count()?;
    let mut tcp_routes = imbl::HashMap::new();
    for _ in 0..count {
        let id = r.str()?.to_owned();
        let port = r.u16()?;
        let service = r.str()?.to_owned();
        let leader = r.bool()?;
        let proxy_protocol = match r.u8()? {
            0 => None,
            1 => Some(ProxyProtocol::V1),
            2 => Some(ProxyProtocol::V2),
            _ => return Err(corrupt("proxy protocol")),
        };
        let app_id = match r.bool()? {
            true => Some(r.str()?.to_owned()),
            false => None,
        };
        let route = TcpRoute {
            id: id.clone(),
            port,
            service,
            leader,
            proxy_protocol,
            app_id,
        };
        tcp_routes.insert(id, Arc::new(route));
    }
    let count = r.count()?;
    let mut services = imbl::HashMap::new();
    let mut instance_count = 0;
    for _ in 0..count {
        let name = r.str()?.to_owned();
        let count = r.count()?;
        let mut backends = Vec::with_capacity(count);
        for _ in 0..count {
            let id = r.str()?.to_owned();
            let addr: SocketAddr = r.str()?.parse().map_err(|_| corrupt("address"))?;
            let create_revision = r.i64()?;
            backends.push(Backend::tracked(id, addr, create_revision));
        }
        instance_count += backends.len();
        if !backends.is_empty() {
            services.insert(name, Arc::new(Service::new(backends)));
        }
    }
    if !r.is_empty() {
        return Err(corrupt("bytes after the end"));
    }

    let (routes, exact, wildcard, catch_all) = build_routes(sections, &names, threads)?;
    let table = Table {
        exact,
        wildcard,
        catch_all: Arc::new(catch_all),
        routes,
        names: interner,
        services,
        instance_count,
        certs: imbl::HashMap::new(),
        tcp_routes,
    };
    Ok((table, meta))
}

fn corrupt(what: &'static str) -> SnapshotError {
    SnapshotError::Corrupt(what)
}

/// One shard of domains as written.
struct Section<'a> {
    kind: u8,
    shard: usize,
    data: &'a [u8],
}

/// A section read back: its set (exact, wildcard) or routes (catch-all).
struct Decoded {
    kind: u8,
    shard: usize,
    set: HashSet<ByDomain>,
    catch_all: Vec<Arc<RouteEntry>>,
}

type Built = (
    Shards<RouteId, ById>,
    Shards<str, ByDomain>,
    Shards<str, ByDomain>,
    Vec<Arc<RouteEntry>>,
);

/// The route sets from the sections: the domain shards decoded side by side, then the id
/// shards filled side by side from what they held.
fn build_routes(
    sections: Vec<Section<'_>>,
    names: &[Name],
    threads: usize,
) -> Result<Built, SnapshotError> {
    // Sections of similar size to each thread, in turn.
    let decoded = in_parallel(sections, threads, |sections| {
        let mut out = Vec::with_capacity(sections.len());
        let mut by_id: Vec<Vec<ById>> = (0..SHARDS).map(|_| Vec::new()).collect();
        for section in sections {
            out.push(decode_section(&section, names, &mut by_id)?);
        }
        Ok::<_, SnapshotError>((out, by_id))
    })?;
    let mut exact: Vec<HashSet<ByDomain>> = (0..SHARDS).map(|_| shards::new_set(0)).collect();
    let mut wildcard: Vec<HashSet<ByDomain>> = (0..SHARDS).map(|_| shards::new_set(0)).collect();
    let mut catch_all = Vec::new();
    let mut by_id: Vec<Vec<Vec<ById>>> = (0..SHARDS).map(|_| Vec::new()).collect();
    let mut entries = 0;
    for result in decoded {
        let (sections, buckets) = result?;
        for (i, bucket) in buckets.into_iter().enumerate() {
            entries += bucket.len();
            if let Some(shard) = by_id.get_mut(i) {
                shard.push(bucket);
            }
        }
        for d in sections {
            let slot = match d.kind {
                EXACT => exact.get_mut(d.shard),
                WILDCARD => wildcard.get_mut(d.shard),
                _ => {
                    if !catch_all.is_empty() {
                        return Err(corrupt("two catch-all sections"));
                    }
                    catch_all = d.catch_all;
                    continue;
                }
            };
            match slot {
                Some(slot) if slot.is_empty() => *slot = d.set,
                _ => return Err(corrupt("a shard twice")),
            }
        }
    }
    let ids = in_parallel(by_id.into_iter().enumerate().collect(), threads, |shards| {
        shards
            .into_iter()
            .map(|(_, buckets): (usize, Vec<Vec<ById>>)| {
                let mut set = shards::new_set(buckets.iter().map(Vec::len).sum());
                for bucket in buckets {
                    set.extend(bucket);
                }
                set
            })
            .collect::<Vec<_>>()
    })?;
    let ids: Vec<HashSet<ById>> = ids.into_iter().flatten().collect();
    let routes = Shards::from_sets(ids).ok_or(corrupt("shards"))?;
    if routes.len() != entries {
        return Err(corrupt("a route id twice"));
    }
    let exact = Shards::from_sets(exact).ok_or(corrupt("shards"))?;
    let wildcard = Shards::from_sets(wildcard).ok_or(corrupt("shards"))?;
    Ok((routes, exact, wildcard, catch_all))
}

/// Runs `work` on `items` split into `threads` runs of neighbours, one thread each; the
/// results in the order of the runs. A thread that panicked is an error, not a panic here.
fn in_parallel<I: Send, O: Send>(
    items: Vec<I>,
    threads: usize,
    work: impl Fn(Vec<I>) -> O + Sync,
) -> Result<Vec<O>, SnapshotError> {
    let threads = threads.clamp(1, items.len().max(1));
    let per = items.len().div_ceil(threads).max(1);
    let mut runs = Vec::with_capacity(threads);
    let mut items = items.into_iter();
    loop {
        let run: Vec<I> = items.by_ref().take(per).collect();
        if run.is_empty() {
            break;
        }
        runs.push(run);
    }
    if runs.len() <= 1 {
        return Ok(runs.into_iter().map(&work).collect());
    }
    std::thread::scope(|scope| {
        let work = &work;
        let handles: Vec<_> = runs
            .into_iter()
            .map(|run| scope.spawn(move || work(run)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().map_err(|_| corrupt("a reading thread failed")))
            .collect()
    })
}

fn decode_section(
    section: &Section<'_>,
    names: &[Name],
    by_id: &mut [Vec<ById>],
) -> Result<Decoded, SnapshotError> {
    let mut r = Reader::new(section.data);
    let groups = r.count()?;
    let mut set = shards::new_set(if section.kind == CATCH_ALL { 0 } else { groups });
    let mut catch_all = Vec::new();
    for _ in 0..groups {
        let domain = r.str()?;
        let key = match (section.kind, kind(domain)) {
            (EXACT, DomainKind::Exact(key)) | (WILDCARD, DomainKind::Wildcard(key)) => key,
            (CATCH_ALL, DomainKind::CatchAll) => "",
            _ => return Err(corrupt("a domain in the wrong kind of section")),
        };
        if section.kind != CATCH_ALL && (key.is_empty() || shard_of(key) != section.shard) {
            return Err(corrupt("a domain in the wrong shard"));
        }
        let count = r.count()?;
        let mut routes = Vec::with_capacity(count);
        for _ in 0..count {
            let route = Arc::new(decode_route(&mut r, domain, names)?);
            if let Some(bucket) = by_id.get_mut(shard_of(&route.id)) {
                bucket.push(ById(route.clone()));
            }
            routes.push(route);
        }
        if section.kind == CATCH_ALL {
            catch_all.extend(routes);
            continue;
        }
        let group = ByDomain::from_routes(routes).ok_or(corrupt("a domain without routes"))?;
        if !set.insert(group) {
            return Err(corrupt("a domain twice"));
        }
    }
    if !r.is_empty() {
        return Err(corrupt("bytes after a section"));
    }
    Ok(Decoded {
        kind: section.kind,
        shard: section.shard,
        set,
        catch_all,
    })
}

fn decode_route(
    r: &mut Reader<'_>,
    domain: &str,
    names: &[Name],
) -> Result<RouteEntry, SnapshotError> {
    let id = match r.u8()? {
        0 => RouteId::from_uuid_bytes(r.array()?),
        1 => RouteId::new(r.str()?),
        _ => return Err(corrupt("route id")),
    };
    let name = |r: &mut Reader<'_>| -> Result<Name, SnapshotError> {
        let i = usize::try_from(r.varint()?).map_err(|_| corrupt("name"))?;
        names.get(i).cloned().ok_or(corrupt("name"))
    };
    let path = name(r)?;
    let service = name(r)?;
    let certificate_id = match r.varint()? {
        0 => None,
        n => Some(
            usize::try_from(n - 1)
                .ok()
                .and_then(|i| names.get(i).cloned())
                .ok_or(corrupt("certificate name"))?,
        ),
    };
    let flags = r.u8()?;
    let backend_protocol = match r.u8()? {
        0 => BackendProtocol::Http1,
        1 => BackendProtocol::H2c,
        2 => BackendProtocol::H2,
        _ => return Err(corrupt("backend protocol")),
    };
    Ok(RouteEntry {
        id,
        domain: domain.into(),
        path,
        service,
        certificate_id,
        sticky: flags & 1 != 0,
        leader: flags & 2 != 0,
        drain_backends: flags & 4 != 0,
        disable_keep_alives: flags & 8 != 0,
        backend_protocol,
    })
}

/// Bounds-checked reads from a byte slice.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { bytes }
    }

    fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], SnapshotError> {
        if n > self.bytes.len() {
            return Err(corrupt("a length past the end"));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], SnapshotError> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, SnapshotError> {
        Ok(self.array::<1>()?[0])
    }

    fn bool(&mut self) -> Result<bool, SnapshotError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(corrupt("a flag")),
        }
    }

    fn u16(&mut self) -> Result<u16, SnapshotError> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, SnapshotError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, SnapshotError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn i64(&mut self) -> Result<i64, SnapshotError> {
        Ok(i64::from_le_bytes(self.array()?))
    }

    fn varint(&mut self) -> Result<u64, SnapshotError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = self.u8()?;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(corrupt("varint"))
    }

    /// A count of things that each take a byte at least: never more than the bytes left (so a
    /// corrupt count cannot ask for a huge allocation).
    fn count(&mut self) -> Result<usize, SnapshotError> {
        let n = self.varint()?;
        usize::try_from(n)
            .ok()
            .filter(|n| *n <= self.bytes.len())
            .ok_or(corrupt("a count past the end"))
    }

    fn str(&mut self) -> Result<&'a str, SnapshotError> {
        let len = self.count()?;
        std::str::from_utf8(self.take(len)?).map_err(|_| corrupt("text"))
    }
}
