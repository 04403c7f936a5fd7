//! The PROXY protocol (HAProxy's spec, versions 1 and 2): one parser for what a load balancer in
//! front sends, and the encoders for what a TCP route sends to its backend.
//!
//! [`parse`] is pure and total (no I/O, no panic on any input; it has its own fuzz target) and
//! says how many bytes it needs when a header is incomplete, so that [`read_header`] reads
//! exactly the header and not one byte of what follows.

pub mod inbound;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::io::{AsyncRead, AsyncReadExt};

const V1_PREFIX: &[u8] = b"PROXY ";
/// The longest v1 header, CRLF included (spec §2.1).
const V1_MAX: usize = 107;
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Header bytes after the 16-byte v2 preamble that the router accepts (addresses plus TLVs).
const V2_MAX_PAYLOAD: usize = 2048;

/// What a header says about the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Header {
    /// The connection was proxied for this client, to this address of the proxy.
    Proxied {
        source: SocketAddr,
        destination: SocketAddr,
    },
    /// No client address to use (v1 `UNKNOWN`, v2 `LOCAL` or an unsupported family, such as a
    /// health check from the load balancer itself): the connection's own peer is the client.
    Local,
}

/// Outcome of [`parse`] on the bytes received so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A whole header of `len` bytes starts the buffer.
    Complete { header: Header, len: usize },
    /// More bytes are needed: at least `needed` in all before parsing again.
    Incomplete { needed: usize },
}

/// Why a header was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeaderError {
    #[error("not a PROXY protocol header")]
    NotProxy,
    #[error("PROXY v1 header longer than 107 bytes")]
    V1TooLong,
    #[error("malformed PROXY v1 header: {0}")]
    V1Malformed(&'static str),
    #[error("unsupported PROXY v2 version or command byte {0:#04x}")]
    V2BadVersion(u8),
    #[error("PROXY v2 address block of {0} bytes is too large or too short for its family")]
    V2BadLength(usize),
    #[error("connection closed inside the PROXY header")]
    Closed,
    #[error("reading the PROXY header: {0}")]
    Io(String),
}

/// Parses a header at the start of `buf`.
pub fn parse(buf: &[u8]) -> Result<Parsed, HeaderError> {
    let probe = buf.len().min(V2_SIGNATURE.len());
    if buf.len() < 8 {
        // Enough to tell the versions apart; both headers are longer than this.
        let v1 = V1_PREFIX.starts_with(&buf[..buf.len().min(V1_PREFIX.len())]);
        let v2 = V2_SIGNATURE.starts_with(&buf[..probe]);
        return if v1 || v2 {
            Ok(Parsed::Incomplete { needed: 8 })
        } else {
            Err(HeaderError::NotProxy)
        };
    }
    if buf.starts_with(V1_PREFIX) {
        return parse_v1(buf);
    }
    if V2_SIGNATURE.starts_with(&buf[..probe]) {
        return parse_v2(buf);
    }
    Err(HeaderError::NotProxy)
}

fn parse_v1(buf: &[u8]) -> Result<Parsed, HeaderError> {
    let window = &buf[..buf.len().min(V1_MAX)];
    let Some(cr) = window.windows(2).position(|w| w == b"\r\n") else {
        return if buf.len() >= V1_MAX {
            Err(HeaderError::V1TooLong)
        } else {
            Ok(Parsed::Incomplete {
                needed: buf.len() + 1,
            })
        };
    };
    let line = std::str::from_utf8(&buf[V1_PREFIX.len()..cr])
        .map_err(|_| HeaderError::V1Malformed("not ASCII"))?;
    let len = cr + 2;
    let mut fields = line.split(' ');
    let header = match fields.next() {
        Some("UNKNOWN") => Header::Local,
        Some(family @ ("TCP4" | "TCP6")) => {
            let mut next = |what| fields.next().ok_or(HeaderError::V1Malformed(what));
            let src_ip: IpAddr = next("source address")?
                .parse()
                .map_err(|_| HeaderError::V1Malformed("source address"))?;
            let dst_ip: IpAddr = next("destination address")?
                .parse()
                .map_err(|_| HeaderError::V1Malformed("destination address"))?;
            let src_port = port(next("source port")?)?;
            let dst_port = port(next("destination port")?)?;
            if fields.next().is_some() {
                return Err(HeaderError::V1Malformed("trailing fields"));
            }
            let v4 = family == "TCP4";
            if src_ip.is_ipv4() != v4 || dst_ip.is_ipv4() != v4 {
                return Err(HeaderError::V1Malformed("address family"));
            }
            Header::Proxied {
                source: SocketAddr::new(src_ip, src_port),
                destination: SocketAddr::new(dst_ip, dst_port),
            }
        }
        _ => return Err(HeaderError::V1Malformed("protocol")),
    };
    Ok(Parsed::Complete { header, len })
}

/// A v1 port: decimal, no sign, no leading zero (spec §2.1), at most 65535.
fn port(field: &str) -> Result<u16, HeaderError> {
    let leading_zero = field.len() > 1 && field.starts_with('0');
    if field.is_empty() || leading_zero || !field.bytes().all(|b| b.is_ascii_digit()) {
        return Err(HeaderError::V1Malformed("port"));
    }
    field.parse().map_err(|_| HeaderError::V1Malformed("port"))
}

fn parse_v2(buf: &[u8]) -> Result<Parsed, HeaderError> {
    if buf.len() < 16 {
        return Ok(Parsed::Incomplete { needed: 16 });
    }
    let version_command = buf[12];
    let family = buf[13];
    let payload = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if payload > V2_MAX_PAYLOAD {
        return Err(HeaderError::V2BadLength(payload));
    }
    let local = match version_command {
        0x20 => true,
        0x21 => false,
        other => return Err(HeaderError::V2BadVersion(other)),
    };
    let len = 16 + payload;
    if buf.len() < len {
        return Ok(Parsed::Incomplete { needed: len });
    }
    let body = &buf[16..len];
    let header = match family {
        _ if local => Header::Local,
        // TCP over IPv4: 4 + 4 + 2 + 2 bytes.
        0x11 => {
            let a = body.get(..12).ok_or(HeaderError::V2BadLength(payload))?;
            let ip = |i: usize| IpAddr::V4(Ipv4Addr::new(a[i], a[i + 1], a[i + 2], a[i + 3]));
            Header::Proxied {
                source: SocketAddr::new(ip(0), u16::from_be_bytes([a[8], a[9]])),
                destination: SocketAddr::new(ip(4), u16::from_be_bytes([a[10], a[11]])),
            }
        }
        // TCP over IPv6: 16 + 16 + 2 + 2 bytes.
        0x21 => {
            let a = body.get(..36).ok_or(HeaderError::V2BadLength(payload))?;
            let ip = |i: usize| {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(&a[i..i + 16]);
                IpAddr::V6(Ipv6Addr::from(octets))
            };
            Header::Proxied {
                source: SocketAddr::new(ip(0), u16::from_be_bytes([a[32], a[33]])),
                destination: SocketAddr::new(ip(16), u16::from_be_bytes([a[34], a[35]])),
            }
        }
        // UNSPEC, UDP, UNIX sockets: nothing the router can use as a client address.
        _ => Header::Local,
    };
    Ok(Parsed::Complete { header, len })
}

/// Reads exactly one header from `stream`, never a byte past it.
pub async fn read_header<S: AsyncRead + Unpin + ?Sized>(
    stream: &mut S,
) -> Result<Header, HeaderError> {
    let mut buf = Vec::with_capacity(64);
    let mut needed = 8;
    loop {
        let have = buf.len();
        buf.resize(needed, 0);
        stream
            .read_exact(&mut buf[have..])
            .await
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::UnexpectedEof => HeaderError::Closed,
                _ => HeaderError::Io(e.to_string()),
            })?;
        match parse(&buf)? {
            Parsed::Complete { header, .. } => return Ok(header),
            Parsed::Incomplete { needed: more } => needed = more,
        }
    }
}

/// A v1 header for a client at `source` that connected to `destination`.
pub fn encode_v1(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let (source, destination) = same_family(source, destination);
    let family = if source.is_ipv4() { "TCP4" } else { "TCP6" };
    format!(
        "PROXY {family} {} {} {} {}\r\n",
        source.ip(),
        destination.ip(),
        source.port(),
        destination.port()
    )
    .into_bytes()
}

/// A v2 header (PROXY command, TCP) for a client at `source` that connected to `destination`.
pub fn encode_v2(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let (source, destination) = same_family(source, destination);
    let mut out = Vec::with_capacity(16 + 36);
    out.extend_from_slice(&V2_SIGNATURE);
    out.push(0x21);
    match (source.ip(), destination.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            out.extend_from_slice(&[0x11, 0, 12]);
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
        }
        (s, d) => {
            out.extend_from_slice(&[0x21, 0, 36]);
            out.extend_from_slice(&to_v6(s).octets());
            out.extend_from_slice(&to_v6(d).octets());
        }
    }
    out.extend_from_slice(&source.port().to_be_bytes());
    out.extend_from_slice(&destination.port().to_be_bytes());
    out
}

fn to_v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

/// Both addresses in one family: IPv4-mapped IPv6 when they differ.
fn same_family(source: SocketAddr, destination: SocketAddr) -> (SocketAddr, SocketAddr) {
    if source.is_ipv4() == destination.is_ipv4() {
        return (source, destination);
    }
    (
        SocketAddr::new(IpAddr::V6(to_v6(source.ip())), source.port()),
        SocketAddr::new(IpAddr::V6(to_v6(destination.ip())), destination.port()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("address")
    }

    #[test]
    fn v1_round_trips_and_reports_its_length() {
        let header = encode_v1(addr("203.0.113.7:51000"), addr("10.0.0.1:443"));
        let mut buf = header.clone();
        buf.extend_from_slice(b"GET / HTTP/1.1\r\n");
        assert_eq!(
            parse(&buf),
            Ok(Parsed::Complete {
                header: Header::Proxied {
                    source: addr("203.0.113.7:51000"),
                    destination: addr("10.0.0.1:443")
                },
                len: header.len()
            })
        );
        let v6 = encode_v1(addr("[2001:db8::1]:1"), addr("[::1]:2"));
        assert!(matches!(parse(&v6), Ok(Parsed::Complete { .. })));
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\nrest"),
            Ok(Parsed::Complete {
                header: Header::Local,
                len: 15
            })
        );
    }

    #[test]
    fn v2_round_trips_both_families() {
        for (s, d) in [
            ("203.0.113.7:51000", "10.0.0.1:443"),
            ("[2001:db8::1]:1", "[2001:db8::2]:2"),
        ] {
            let header = encode_v2(addr(s), addr(d));
            assert_eq!(
                parse(&header),
                Ok(Parsed::Complete {
                    header: Header::Proxied {
                        source: addr(s),
                        destination: addr(d)
                    },
                    len: header.len()
                })
            );
        }
        let mut local = V2_SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0, 0]);
        assert_eq!(
            parse(&local),
            Ok(Parsed::Complete {
                header: Header::Local,
                len: 16
            })
        );
    }

    #[test]
    fn incomplete_headers_ask_for_more() {
        let header = encode_v2(addr("1.2.3.4:5"), addr("6.7.8.9:10"));
        for cut in 0..header.len() {
            assert!(
                matches!(parse(&header[..cut]), Ok(Parsed::Incomplete { needed }) if needed > cut),
                "cut at {cut}"
            );
        }
        let header = encode_v1(addr("1.2.3.4:5"), addr("6.7.8.9:10"));
        for cut in 0..header.len() {
            assert!(matches!(
                parse(&header[..cut]),
                Ok(Parsed::Incomplete { .. })
            ));
        }
    }

    #[test]
    fn garbage_is_refused() {
        let cases: [&[u8]; 9] = [
            b"GET / HTTP/1.1\r\n\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
            b"PROXY TCP4 1.2.3.4 ::1 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n",
            b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY TCP4 1.2.3.4\r\n",
            b"\r\n\r\n\0\r\nQUIT\n\x31\x11\0\x0c000000000000",
            b"\r\n\r\n\0\r\nQUIT\n\x21\x11\0\x04abcd",
        ];
        for case in cases {
            assert!(parse(case).is_err(), "{:?}", String::from_utf8_lossy(case));
        }
        let long = [b"PROXY ".as_slice(), &[b'1'; 120]].concat();
        assert_eq!(parse(&long), Err(HeaderError::V1TooLong));
    }

    #[tokio::test]
    async fn read_header_stops_at_the_end_of_the_header() {
        for header in [
            encode_v1(addr("1.2.3.4:5"), addr("6.7.8.9:10")),
            encode_v2(addr("1.2.3.4:5"), addr("6.7.8.9:10")),
            b"PROXY UNKNOWN\r\n".to_vec(),
        ] {
            let mut input = header.clone();
            input.extend_from_slice(b"payload");
            let mut reader = &input[..];
            read_header(&mut reader).await.expect("header");
            assert_eq!(reader, b"payload");
        }
        let mut short = &b"PROXY TCP4 1.2"[..];
        assert_eq!(read_header(&mut short).await, Err(HeaderError::Closed));
    }
}
