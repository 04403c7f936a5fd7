//! The controller API client: JSON over HTTP/1.1, one connection per request.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::config::Cluster;
use crate::api::ErrorBody;

/// How long connecting may take before the controller counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a whole request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the controller of cluster {cluster:?} at {url}: {reason}")]
    Unreachable {
        cluster: String,
        url: String,
        reason: String,
    },
    /// The controller answered with its error shape.
    #[error("{}", .body.message)]
    Api { status: StatusCode, body: ErrorBody },
    #[error("the controller at {url} gave an unexpected answer: {reason}")]
    Protocol { url: String, reason: String },
    #[error("controller URL {0:?} is not http://host:port")]
    BadUrl(String),
}

impl ClientError {
    /// The API error code, if the controller answered with one.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { body, .. } => Some(&body.code),
            _ => None,
        }
    }
}

/// Talks to one cluster's controller.
#[derive(Clone, Debug)]
pub struct Client {
    cluster: String,
    base: String,
    authority: String,
    /// The path of the controller URL (usually empty), before every request path.
    prefix: String,
    key: String,
}

impl Client {
    pub fn new(cluster: &Cluster) -> Result<Client, ClientError> {
        let base = cluster.controller_url.trim_end_matches('/').to_owned();
        let uri: Uri = base
            .parse()
            .map_err(|_| ClientError::BadUrl(cluster.controller_url.clone()))?;
        if uri.scheme_str() != Some("http") {
            return Err(ClientError::BadUrl(cluster.controller_url.clone()));
        }
        let authority = uri
            .authority()
            .ok_or_else(|| ClientError::BadUrl(cluster.controller_url.clone()))?;
        let authority = match authority.port_u16() {
            Some(_) => authority.to_string(),
            None => format!("{}:80", authority.host()),
        };
        let prefix = uri.path().trim_end_matches('/').to_owned();
        Ok(Client {
            cluster: cluster.name.clone(),
            base,
            authority,
            prefix,
            key: cluster.key.clone(),
        })
    }

    /// The cluster key (the host agents' API takes it too).
    pub fn key(&self) -> &str {
        &self.key
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.send(Method::GET, path, None::<&()>).await
    }

    pub async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl Serialize,
    ) -> Result<T, ClientError> {
        self.send(Method::POST, path, Some(body)).await
    }

    pub async fn put<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl Serialize,
    ) -> Result<T, ClientError> {
        self.send(Method::PUT, path, Some(body)).await
    }

    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.send(Method::DELETE, path, None::<&()>).await
    }

    pub async fn send<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T, ClientError> {
        match tokio::time::timeout(REQUEST_TIMEOUT, self.exchange(method, path, body)).await {
            Ok(result) => result,
            Err(_) => Err(self.unreachable(format!("no answer within {REQUEST_TIMEOUT:?}"))),
        }
    }

    async fn exchange<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T, ClientError> {
        let uri = format!("{}{path}", self.prefix);
        let bytes = match body {
            Some(body) => serde_json::to_vec(body).map_err(|e| self.protocol(e.to_string()))?,
            None => Vec::new(),
        };
        let mut request = Request::builder()
            .method(method)
            .uri(&uri)
            .header(http::header::HOST, &self.authority)
            .header(http::header::AUTHORIZATION, format!("Bearer {}", self.key))
            .header(http::header::ACCEPT, "application/json")
            .header(
                http::header::USER_AGENT,
                concat!("flynn-cli/", env!("CARGO_PKG_VERSION")),
            );
        if body.is_some() {
            request = request.header(http::header::CONTENT_TYPE, "application/json");
        }
        let request = request
            .body(Full::new(Bytes::from(bytes)))
            .map_err(|e| self.protocol(e.to_string()))?;

        let connect = tokio::net::TcpStream::connect(&self.authority);
        let stream = match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return Err(self.unreachable(e.to_string())),
            Err(_) => {
                return Err(self.unreachable(format!("no connection within {CONNECT_TIMEOUT:?}")))
            }
        };
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| self.unreachable(e.to_string()))?;
        let driver = tokio::spawn(connection);
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| self.unreachable(e.to_string()))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| self.unreachable(e.to_string()))?
            .to_bytes();
        driver.abort();

        if !status.is_success() {
            return match serde_json::from_slice::<ErrorBody>(&body) {
                Ok(body) => Err(ClientError::Api { status, body }),
                Err(_) => Err(self.protocol(format!(
                    "{status}: {}",
                    String::from_utf8_lossy(&body).trim()
                ))),
            };
        }
        let body: &[u8] = if body.is_empty() { b"null" } else { &body };
        serde_json::from_slice(body).map_err(|e| self.protocol(format!("bad JSON: {e}")))
    }

    fn unreachable(&self, reason: String) -> ClientError {
        ClientError::Unreachable {
            cluster: self.cluster.clone(),
            url: self.base.clone(),
            reason,
        }
    }

    fn protocol(&self, reason: String) -> ClientError {
        ClientError::Protocol {
            url: self.base.clone(),
            reason,
        }
    }
}

/// Percent-encodes one path segment.
pub fn segment(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for b in raw.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::segment;

    #[test]
    fn encodes_segments() {
        assert_eq!(segment("my-app_1.x"), "my-app_1.x");
        assert_eq!(segment("a/b c"), "a%2Fb%20c");
    }
}
