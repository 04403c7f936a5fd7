//! The host agents' API, which `flynn run` and `flynn log` talk to directly: the controller
//! names the hosts (`GET /hosts`, each with its `api` address) and the jobs' hosts; the CLI
//! then connects to the agent with the same cluster key. (No proxy through the controller: one
//! hop fewer, and a job's output never loads the controller; the agents' API addresses must be
//! reachable from where `flynn` runs.)

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::client::Client;
use crate::api::types::Host;
use crate::api::ErrorBody;
use crate::host::api::{ATTACH_PROTOCOL, JOB_HEADER};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// One host agent's API.
#[derive(Clone, Debug)]
pub struct Agent {
    pub host: String,
    addr: String,
    key: String,
}

impl Agent {
    /// The agent of `host`, with the cluster's key.
    pub fn new(host: &Host, client: &Client) -> anyhow::Result<Agent> {
        if host.api.is_empty() {
            anyhow::bail!("host {} has no API address (an older host agent?)", host.id);
        }
        Ok(Agent {
            host: host.id.clone(),
            addr: host.api.clone(),
            key: client.key().to_owned(),
        })
    }

    async fn connect(&self) -> anyhow::Result<TokioIo<tokio::net::TcpStream>> {
        let connect = tokio::net::TcpStream::connect(&self.addr);
        match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
            Ok(Ok(stream)) => Ok(TokioIo::new(stream)),
            Ok(Err(e)) => Err(self.unreachable(e)),
            Err(_) => Err(self.unreachable(format!("no connection within {CONNECT_TIMEOUT:?}"))),
        }
    }

    fn unreachable(&self, e: impl std::fmt::Display) -> anyhow::Error {
        anyhow::anyhow!(
            "cannot reach the host agent of {} at {}: {e}",
            self.host,
            self.addr
        )
    }

    fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<http::request::Builder> {
        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, &self.addr)
            .header(http::header::AUTHORIZATION, format!("Bearer {}", self.key));
        if body.is_some() {
            builder = builder.header(http::header::CONTENT_TYPE, "application/json");
        }
        Ok(builder)
    }

    /// Sends a request; the response (its body still streaming), or the agent's error as one.
    async fn send(
        &self,
        request: Request<Full<Bytes>>,
        upgrades: bool,
    ) -> anyhow::Result<http::Response<Incoming>> {
        let io = self.connect().await?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| self.unreachable(e))?;
        if upgrades {
            tokio::spawn(connection.with_upgrades());
        } else {
            tokio::spawn(connection);
        }
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| self.unreachable(e))?;
        let status = response.status();
        if status.is_success() || status == StatusCode::SWITCHING_PROTOCOLS {
            return Ok(response);
        }
        let body = response.into_body().collect().await?.to_bytes();
        match serde_json::from_slice::<ErrorBody>(&body) {
            Ok(error) => Err(anyhow::anyhow!("{}", error.message)),
            Err(_) => Err(anyhow::anyhow!(
                "the host agent of {} answered {status}: {}",
                self.host,
                String::from_utf8_lossy(&body).trim()
            )),
        }
    }

    /// A JSON request; the JSON answer.
    pub async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> anyhow::Result<T> {
        let bytes = body.map(serde_json::to_vec).transpose()?;
        let request = self
            .request(method, path, bytes.clone())?
            .body(Full::new(Bytes::from(bytes.unwrap_or_default())))?;
        let response = self.send(request, false).await?;
        let body = response.into_body().collect().await?.to_bytes();
        Ok(serde_json::from_slice(&body)?)
    }

    /// A GET whose body streams.
    pub async fn stream(&self, path: &str) -> anyhow::Result<Incoming> {
        let request = self
            .request(Method::GET, path, None)?
            .body(Full::new(Bytes::new()))?;
        Ok(self.send(request, false).await?.into_body())
    }

    /// `POST path` with `Upgrade: flynn-attach`: the job id and the upgraded connection.
    pub async fn attach(
        &self,
        path: &str,
        body: &impl Serialize,
    ) -> anyhow::Result<(String, TokioIo<hyper::upgrade::Upgraded>)> {
        let bytes = serde_json::to_vec(body)?;
        let request = self
            .request(Method::POST, path, Some(bytes.clone()))?
            .header(http::header::CONNECTION, "upgrade")
            .header(http::header::UPGRADE, ATTACH_PROTOCOL)
            .body(Full::new(Bytes::from(bytes)))?;
        let response = self.send(request, true).await?;
        if response.status() != StatusCode::SWITCHING_PROTOCOLS {
            anyhow::bail!(
                "the host agent of {} did not attach (answered {})",
                self.host,
                response.status()
            );
        }
        let job = response
            .headers()
            .get(JOB_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let upgraded = hyper::upgrade::on(response)
            .await
            .map_err(|e| self.unreachable(e))?;
        Ok((job, TokioIo::new(upgraded)))
    }
}

/// Reads lines from a streaming body, giving each complete line (without its newline).
pub struct Lines {
    body: Incoming,
    buf: Vec<u8>,
    done: bool,
}

impl Lines {
    pub fn new(body: Incoming) -> Lines {
        Lines {
            body,
            buf: Vec::new(),
            done: false,
        }
    }

    /// The next line; None at the end of the body.
    pub async fn next(&mut self) -> anyhow::Result<Option<Vec<u8>>> {
        loop {
            if let Some(end) = self.buf.iter().position(|b| *b == b'\n') {
                let mut line: Vec<u8> = self.buf.drain(..=end).collect();
                line.pop();
                return Ok(Some(line));
            }
            if self.done {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Ok(Some(std::mem::take(&mut self.buf)));
            }
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        self.buf.extend_from_slice(data);
                    }
                }
                Some(Err(e)) => return Err(e.into()),
                None => self.done = true,
            }
        }
    }
}
