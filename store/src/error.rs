use crate::Revision;

/// Everything a store operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store URL {0:?} is not etcd://host:port[,host:port...], file:///path or memory:")]
    BadUrl(String),
    /// The store could not be reached or the request failed in transit; worth retrying.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The requested watch start revision has been compacted away; re-list and watch again.
    #[error("revision compacted (oldest available is {compact_revision})")]
    Compacted { compact_revision: Revision },
    /// The store refused the request (bad argument, future revision, too large); retrying the
    /// same call will not help.
    #[error("store rejected the request: {0}")]
    Rejected(String),
    #[error("lease {0} not found (expired or revoked)")]
    LeaseNotFound(i64),
    /// The embedded store's file could not be read or written.
    #[error("embedded store: {0}")]
    Embedded(String),
    #[error("store returned a key or value that is not UTF-8: {0}")]
    NotUtf8(String),
}

impl StoreError {
    /// Whether retrying the same call later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}
