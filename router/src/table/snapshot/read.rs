//! Reading a table back from the snapshot format (see the parent module), its shards decoded
//! side by side.

use std::io::{self, Read};
use std::net::SocketAddr;
use std::sync::{mpsc, Arc, Mutex, PoisonError};

use flynn_store::types::{BackendProtocol, ProxyProtocol, TcpRoute};

use super::{
    Meta, SnapshotError, CATCH_ALL, END, END_OF_BODY, EXACT, MAGIC, META, NAMES, SECTION, SERVICES,
    TCP, TRAILER, VERSION, WILDCARD,
};
use crate::backend::{Backend, Service};
use crate::table::names::Interner;
use crate::table::shards::{self, shard_of, HashSet, Shards, SHARDS};
use crate::table::{
    in_parallel, kind, ByDomain, ById, DomainKind, Name, RouteEntry, RouteId, Table,
};

/// Reads a snapshot, its sections decoded on every CPU.
pub fn read(bytes: &[u8]) -> Result<(Table, Meta), SnapshotError> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    read_with(bytes, threads)
}

/// [`read`] on `threads` threads.
pub fn read_with(bytes: &[u8], threads: usize) -> Result<(Table, Meta), SnapshotError> {
    read_from(bytes, bytes.len() as u64, threads)
}

/// The meta block alone (a file's first): which table a file of `size` bytes holds, without
/// reading the table (nor checking the trailer's checksum).
pub fn read_meta(input: impl Read, size: u64) -> Result<Meta, SnapshotError> {
    Input::open(input, size)?.expect(META, meta)
}

fn meta(r: &mut Reader<'_>) -> Result<Meta, SnapshotError> {
    Ok(Meta {
        prefix: r.str()?.to_owned(),
        store: r.str()?.to_owned(),
        routes: revision(r)?,
        services: revision(r)?,
    })
}

/// Reads a snapshot of `size` bytes from `input`, block by block, its sections decoded on
/// `threads` threads as they come.
pub fn read_from(
    input: impl Read,
    size: u64,
    threads: usize,
) -> Result<(Table, Meta), SnapshotError> {
    let mut input = Input::open(input, size)?;
    let meta = input.expect(META, meta)?;
    let interner = Interner::default();
    let names = input.expect(NAMES, |r| {
        let count = r.count()?;
        let mut names = Vec::with_capacity(count);
        for _ in 0..count {
            names.push(interner.intern_str(r.str()?));
        }
        Ok(names)
    })?;
    let threads = threads.max(1);
    let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(threads * 2);
    let rx = Mutex::new(rx);
    let (decoded, rest) = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| scope.spawn(|| decode_sections(&rx, &names)))
            .collect();
        let rest = input.rest(&tx);
        drop(tx);
        let decoded: Vec<_> = workers
            .into_iter()
            .map(|w| w.join().unwrap_or(Err(corrupt("a reading thread failed"))))
            .collect();
        (decoded, rest)
    });
    let (tcp_routes, (services, instance_count)) = rest?;
    let decoded = decoded.into_iter().collect::<Result<Vec<_>, _>>()?;
    let (routes, exact, wildcard, catch_all) = build_routes(decoded, threads)?;
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

type TcpRoutes = imbl::HashMap<String, Arc<TcpRoute>>;
type Services = (imbl::HashMap<String, Arc<Service>>, usize);

/// The snapshot being read: the body checksummed as it goes, its length bounded by the file's.
struct Input<R: Read> {
    inner: R,
    crc: crc32fast::Hasher,
    /// Body bytes read so far.
    read: u64,
    /// Bytes of the file not read yet, the trailer's included.
    left: u64,
}

impl<R: Read> Input<R> {
    /// Checks the file's head.
    fn open(mut inner: R, size: u64) -> Result<Input<R>, SnapshotError> {
        let mut head = [0u8; MAGIC.len() + 4];
        let n = usize::try_from(size).map_or(head.len(), |s| s.min(head.len()));
        read_exact(&mut inner, &mut head[..n])?;
        if !MAGIC.starts_with(&head[..n.min(MAGIC.len())]) {
            return Err(SnapshotError::Foreign);
        }
        if n < head.len() {
            return Err(SnapshotError::Truncated);
        }
        let mut version = [0; 4];
        version.copy_from_slice(&head[MAGIC.len()..]);
        let version = u32::from_le_bytes(version);
        if version != VERSION {
            return Err(SnapshotError::Version(version));
        }
        Ok(Input {
            inner,
            crc: crc32fast::Hasher::new(),
            read: 0,
            left: size - head.len() as u64,
        })
    }

    fn body(&mut self, buf: &mut [u8]) -> Result<(), SnapshotError> {
        read_exact(&mut self.inner, buf)?;
        self.crc.update(buf);
        self.read += buf.len() as u64;
        self.left -= buf.len() as u64;
        Ok(())
    }

    /// The next block: its tag and bytes.
    fn block(&mut self) -> Result<(u8, Vec<u8>), SnapshotError> {
        let mut head = [0u8; 9];
        if self.left < (head.len() + TRAILER) as u64 {
            return Err(SnapshotError::Truncated);
        }
        self.body(&mut head)?;
        let mut len = [0u8; 8];
        len.copy_from_slice(&head[1..]);
        let len = u64::from_le_bytes(len);
        if len > self.left - TRAILER as u64 {
            return Err(SnapshotError::Truncated);
        }
        let mut data = vec![0; usize::try_from(len).map_err(|_| corrupt("block length"))?];
        self.body(&mut data)?;
        Ok((head[0], data))
    }

    /// The next block, which must be a `tag` one, read with `parse` to its end.
    fn expect<T>(
        &mut self,
        tag: u8,
        parse: impl FnOnce(&mut Reader<'_>) -> Result<T, SnapshotError>,
    ) -> Result<T, SnapshotError> {
        let (found, data) = self.block()?;
        if found != tag {
            return Err(corrupt("a block out of place"));
        }
        let mut r = Reader::new(&data);
        let value = parse(&mut r)?;
        if !r.is_empty() {
            return Err(corrupt("bytes after a block's end"));
        }
        Ok(value)
    }

    /// The sections (sent to `sections`), the TCP routes, the services, the end and the
    /// trailer.
    fn rest(
        &mut self,
        sections: &mpsc::SyncSender<Vec<u8>>,
    ) -> Result<(TcpRoutes, Services), SnapshotError> {
        let (tcp, services) = loop {
            let (tag, data) = self.block()?;
            match tag {
                SECTION => sections
                    .send(data)
                    .map_err(|_| corrupt("no reading thread left"))?,
                TCP => {
                    let mut r = Reader::new(&data);
                    let tcp = tcp_routes(&mut r)?;
                    if !r.is_empty() {
                        return Err(corrupt("bytes after a block's end"));
                    }
                    break (tcp, self.expect(SERVICES, services)?);
                }
                _ => return Err(corrupt("a block out of place")),
            }
        };
        self.expect(END_OF_BODY, |_| Ok(()))?;
        let mut trailer = [0u8; TRAILER];
        if self.left != TRAILER as u64 {
            return Err(corrupt("bytes after the end"));
        }
        read_exact(&mut self.inner, &mut trailer)?;
        let mut t = Reader::new(&trailer);
        let (len, crc) = (t.u64()?, t.u32()?);
        if t.take(END.len())? != END || len != self.read {
            return Err(corrupt("trailer"));
        }
        if self.crc.clone().finalize() != crc {
            return Err(SnapshotError::Checksum);
        }
        Ok((tcp, services))
    }
}

/// `read_exact`, a short file being [`SnapshotError::Truncated`].
fn read_exact(input: &mut impl Read, buf: &mut [u8]) -> Result<(), SnapshotError> {
    input.read_exact(buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => SnapshotError::Truncated,
        _ => SnapshotError::Io(e),
    })
}

fn tcp_routes(r: &mut Reader<'_>) -> Result<TcpRoutes, SnapshotError> {
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
    Ok(tcp_routes)
}

fn services(r: &mut Reader<'_>) -> Result<Services, SnapshotError> {
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
    Ok((services, instance_count))
}

/// A reading thread: decodes the sections it takes from `sections` until there are no more;
/// the shards decoded and the routes by id shard. After an error it only drains the queue
/// (the reader must never wait on a full one).
fn decode_sections(
    sections: &Mutex<mpsc::Receiver<Vec<u8>>>,
    names: &[Name],
) -> Result<Decoded, SnapshotError> {
    let mut out = Vec::new();
    let mut by_id: Vec<Vec<ById>> = (0..SHARDS).map(|_| Vec::new()).collect();
    let mut failed = None;
    loop {
        let next = sections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .recv();
        let Ok(data) = next else {
            break;
        };
        if failed.is_some() {
            continue;
        }
        match decode_section(&data, names, &mut by_id) {
            Ok(section) => out.push(section),
            Err(e) => failed = Some(e),
        }
    }
    match failed {
        Some(e) => Err(e),
        None => Ok((out, by_id)),
    }
}

/// A store revision: never negative, and one more must fit (the mirrors resume from it + 1).
fn revision(r: &mut Reader<'_>) -> Result<i64, SnapshotError> {
    let revision = r.i64()?;
    if (0..i64::MAX).contains(&revision) {
        Ok(revision)
    } else {
        Err(corrupt("a revision no store has"))
    }
}

fn corrupt(what: &'static str) -> SnapshotError {
    SnapshotError::Corrupt(what)
}

/// A section read back: its set (exact, wildcard) or routes (catch-all).
struct Shard {
    kind: u8,
    shard: usize,
    set: HashSet<ByDomain>,
    catch_all: Vec<Arc<RouteEntry>>,
}

/// What a reading thread decoded: shards, and the routes by the shard of their id.
type Decoded = (Vec<Shard>, Vec<Vec<ById>>);

type Built = (
    Shards<RouteId, ById>,
    Shards<str, ByDomain>,
    Shards<str, ByDomain>,
    Vec<Arc<RouteEntry>>,
);

/// The route sets from what the reading threads decoded: the domain shards as they are, the
/// id shards filled side by side.
fn build_routes(decoded: Vec<Decoded>, threads: usize) -> Result<Built, SnapshotError> {
    let mut exact: Vec<HashSet<ByDomain>> = (0..SHARDS).map(|_| shards::new_set(0)).collect();
    let mut wildcard: Vec<HashSet<ByDomain>> = (0..SHARDS).map(|_| shards::new_set(0)).collect();
    let mut catch_all = Vec::new();
    let mut by_id: Vec<Vec<Vec<ById>>> = (0..SHARDS).map(|_| Vec::new()).collect();
    let mut entries = 0;
    for (sections, buckets) in decoded {
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
    })
    .map_err(|_| corrupt("a reading thread failed"))?;
    let ids: Vec<HashSet<ById>> = ids.into_iter().flatten().collect();
    let routes = Shards::from_sets(ids).ok_or(corrupt("shards"))?;
    if routes.len() != entries {
        return Err(corrupt("a route id twice"));
    }
    let exact = Shards::from_sets(exact).ok_or(corrupt("shards"))?;
    let wildcard = Shards::from_sets(wildcard).ok_or(corrupt("shards"))?;
    Ok((routes, exact, wildcard, catch_all))
}

fn decode_section(
    data: &[u8],
    names: &[Name],
    by_id: &mut [Vec<ById>],
) -> Result<Shard, SnapshotError> {
    let mut r = Reader::new(data);
    let section = r.u8()?;
    let shard = usize::try_from(r.varint()?).map_err(|_| corrupt("shard"))?;
    if section > CATCH_ALL || shard >= SHARDS || (section == CATCH_ALL && shard != 0) {
        return Err(corrupt("section"));
    }
    let groups = r.count()?;
    let mut set = shards::new_set(if section == CATCH_ALL { 0 } else { groups });
    let mut catch_all = Vec::new();
    for _ in 0..groups {
        let domain = r.str()?;
        let key = match (section, kind(domain)) {
            (EXACT, DomainKind::Exact(key)) | (WILDCARD, DomainKind::Wildcard(key)) => key,
            (CATCH_ALL, DomainKind::CatchAll) => "",
            _ => return Err(corrupt("a domain in the wrong kind of section")),
        };
        if section != CATCH_ALL && (key.is_empty() || shard_of(key) != shard) {
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
        if section == CATCH_ALL {
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
    Ok(Shard {
        kind: section,
        shard,
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
