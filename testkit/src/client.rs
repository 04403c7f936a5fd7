//! A raw HTTP/1.1 client: the test writes the request bytes, so Host headers, odd URIs and
//! half-sent requests reach the server exactly as written.

use std::time::Duration;

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A parsed response.
#[derive(Clone, Debug)]
pub struct Response {
    /// The minor version of the status line: 1 for `HTTP/1.1`, 0 for `HTTP/1.0`.
    pub minor_version: u8,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first header of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> anyhow::Result<serde_json::Value> {
        serde_json::from_slice(&self.body).with_context(|| format!("not JSON: {}", self.text()))
    }
}

/// One client connection that can carry several requests (keep-alive).
pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    pub async fn open(addr: &str) -> anyhow::Result<Conn> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connect {addr}"))?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            buf: Vec::new(),
        })
    }

    /// Connects from a chosen local address (e.g. 127.0.0.2), to look like another client.
    pub async fn open_from(addr: &str, local_ip: std::net::IpAddr) -> anyhow::Result<Conn> {
        let target: std::net::SocketAddr = addr.parse().context("address")?;
        let socket = match local_ip {
            std::net::IpAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
            std::net::IpAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        };
        socket.bind(std::net::SocketAddr::new(local_ip, 0))?;
        let stream = socket
            .connect(target)
            .await
            .with_context(|| format!("connect {addr} from {local_ip}"))?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            buf: Vec::new(),
        })
    }

    /// Writes raw bytes without reading anything.
    pub async fn write(&mut self, raw: &[u8]) -> anyhow::Result<()> {
        self.stream.write_all(raw).await?;
        Ok(())
    }

    /// Sends `raw` and reads one response.
    pub async fn request(&mut self, raw: &[u8]) -> anyhow::Result<Response> {
        self.write(raw).await?;
        self.read_response(false).await
    }

    /// Sends a GET for `path` with `Host: host` and the extra header lines given.
    pub async fn get(
        &mut self,
        path: &str,
        host: &str,
        extra: &[(&str, &str)],
    ) -> anyhow::Result<Response> {
        let mut raw = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n");
        for (k, v) in extra {
            raw.push_str(&format!("{k}: {v}\r\n"));
        }
        raw.push_str("\r\n");
        self.request(raw.as_bytes()).await
    }

    /// Reads one response (`head_only`: the request was a HEAD, so there is no body).
    pub async fn read_response(&mut self, head_only: bool) -> anyhow::Result<Response> {
        let (minor_version, status, headers, used) = loop {
            let mut parsed = [httparse::EMPTY_HEADER; 64];
            let mut resp = httparse::Response::new(&mut parsed);
            if let httparse::Status::Complete(used) = resp.parse(&self.buf)? {
                let status = resp.code.unwrap_or(0);
                let headers = resp
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_owned(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        )
                    })
                    .collect::<Vec<_>>();
                break (resp.version.unwrap_or(0), status, headers, used);
            }
            if self.fill().await? == 0 {
                bail!("connection closed before a complete response head");
            }
        };
        self.buf.drain(..used);
        let mut response = Response {
            minor_version,
            status,
            headers,
            body: Vec::new(),
        };
        if head_only || status == 204 || status == 304 || (100..200).contains(&status) {
            return Ok(response);
        }
        let chunked = response
            .header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
        if chunked {
            response.body = self.read_chunked().await?;
        } else if let Some(len) = response.header("content-length") {
            let len: usize = len.trim().parse().context("bad content-length")?;
            while self.buf.len() < len {
                if self.fill().await? == 0 {
                    bail!("connection closed in the body");
                }
            }
            response.body = self.buf.drain(..len).collect();
        } else {
            while self.fill().await? != 0 {}
            response.body = std::mem::take(&mut self.buf);
        }
        Ok(response)
    }

    /// Reads whatever arrives next (at least one byte), for streaming tests.
    pub async fn read_some(&mut self) -> anyhow::Result<Vec<u8>> {
        if self.buf.is_empty() && self.fill().await? == 0 {
            bail!("connection closed");
        }
        Ok(std::mem::take(&mut self.buf))
    }

    /// Whether the server closed the connection (reads until EOF or `within`).
    pub async fn closed_within(&mut self, within: Duration) -> bool {
        matches!(
            tokio::time::timeout(within, self.fill()).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }

    async fn read_chunked(&mut self) -> anyhow::Result<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let line = self.read_line().await?;
            let size_str = line.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size_str, 16)
                .with_context(|| format!("bad chunk size {size_str:?}"))?;
            if size == 0 {
                // Trailers until the empty line.
                while !self.read_line().await?.is_empty() {}
                return Ok(body);
            }
            while self.buf.len() < size + 2 {
                if self.fill().await? == 0 {
                    bail!("connection closed in a chunk");
                }
            }
            body.extend(self.buf.drain(..size));
            self.buf.drain(..2);
        }
    }

    async fn read_line(&mut self) -> anyhow::Result<String> {
        loop {
            if let Some(pos) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..pos]).into_owned();
                self.buf.drain(..pos + 2);
                return Ok(line);
            }
            if self.fill().await? == 0 {
                bail!("connection closed in a line");
            }
        }
    }

    async fn fill(&mut self) -> anyhow::Result<usize> {
        let mut chunk = [0u8; 16 * 1024];
        let n = self.stream.read(&mut chunk).await?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }
}

/// A GET on a fresh connection.
pub async fn get(addr: &str, path: &str, host: &str) -> anyhow::Result<Response> {
    Conn::open(addr).await?.get(path, host, &[]).await
}

/// Sends raw bytes on a fresh connection and reads one response.
pub async fn send(addr: &str, raw: &[u8]) -> anyhow::Result<Response> {
    Conn::open(addr).await?.request(raw).await
}
