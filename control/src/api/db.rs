//! Typed JSON access to the store, and the controller's key layout.
//!
//! ```text
//! <prefix>/apps/<app id>                        App
//! <prefix>/releases/<release id>                Release (never rewritten)
//! <prefix>/artifacts/<artifact id>              Artifact (never rewritten)
//! <prefix>/formations/<app id>/<release id>     Formation
//! <prefix>/events/<uuid>                        Event (its id is the key's create revision)
//! <prefix>/hosts/<host id>                      Host (on the host agent's lease)
//! <prefix>/jobs/<host id>/<job id>              Job (the scheduler's, and the host agent's)
//! <prefix>/runs/<host id>/<job id>              Job: a one-off job (`flynn run`), the host agent's
//!                                               alone, on its lease; the scheduler never sees it
//! <prefix>/scheduler/leader                     the scheduler leader's id (on its lease)
//! <prefix>/deployments/<deployment id>          Deployment
//! <prefix>/deploying/<app id>                   the id of the app's deployment in progress
//! <prefix>/claims/apps/<name>                   Claim: an app name
//! <prefix>/claims/http/<domain><path>           Claim: an HTTP domain + path
//! <prefix>/claims/tcp/<port>                    Claim: a TCP port
//! ```
//! Routes, certificates and service instances use [`flynn_store::Keys`].

use std::sync::Arc;

use flynn_store::{Cas, KeyValue, Keys, LeaseId, Revision, Store};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::error::{ApiError, ApiResult};

/// A value read from the store with its revisions.
#[derive(Clone, Debug)]
pub struct Versioned<T> {
    pub value: T,
    pub mod_revision: Revision,
    pub create_revision: Revision,
    pub lease: Option<LeaseId>,
}

/// The store, with JSON in and out, and the key layout.
#[derive(Clone)]
pub struct Db {
    pub store: Arc<dyn Store>,
    pub keys: Keys,
}

impl Db {
    pub fn new(store: Arc<dyn Store>, keys: Keys) -> Db {
        Db { store, keys }
    }

    fn under(&self, folder: &str) -> String {
        format!("{}/{folder}/", self.keys.prefix())
    }

    pub fn apps(&self) -> String {
        self.under("apps")
    }
    pub fn app(&self, id: &str) -> String {
        format!("{}{id}", self.apps())
    }
    pub fn releases(&self) -> String {
        self.under("releases")
    }
    pub fn release(&self, id: &str) -> String {
        format!("{}{id}", self.releases())
    }
    pub fn artifacts(&self) -> String {
        self.under("artifacts")
    }
    pub fn artifact(&self, id: &str) -> String {
        format!("{}{id}", self.artifacts())
    }
    /// The formations of every app.
    pub fn all_formations(&self) -> String {
        self.under("formations")
    }
    pub fn formations(&self, app_id: &str) -> String {
        format!("{}{app_id}/", self.under("formations"))
    }
    pub fn formation(&self, app_id: &str, release_id: &str) -> String {
        format!("{}{release_id}", self.formations(app_id))
    }
    pub fn hosts(&self) -> String {
        self.under("hosts")
    }
    pub fn host(&self, id: &str) -> String {
        format!("{}{id}", self.hosts())
    }
    pub fn jobs(&self) -> String {
        self.under("jobs")
    }
    pub fn host_jobs(&self, host_id: &str) -> String {
        format!("{}{host_id}/", self.jobs())
    }
    pub fn job(&self, host_id: &str, job_id: &str) -> String {
        format!("{}{job_id}", self.host_jobs(host_id))
    }
    /// One-off jobs (`flynn run`) of every host.
    pub fn runs(&self) -> String {
        self.under("runs")
    }
    pub fn host_runs(&self, host_id: &str) -> String {
        format!("{}{host_id}/", self.runs())
    }
    pub fn run(&self, host_id: &str, job_id: &str) -> String {
        format!("{}{job_id}", self.host_runs(host_id))
    }
    pub fn deployments(&self) -> String {
        self.under("deployments")
    }
    pub fn deployment(&self, id: &str) -> String {
        format!("{}{id}", self.deployments())
    }
    /// Held (created, compare-and-swap) by the app's deployment in progress.
    pub fn deploying(&self, app_id: &str) -> String {
        format!("{}{app_id}", self.under("deploying"))
    }
    pub fn scheduler_leader(&self) -> String {
        format!("{}leader", self.under("scheduler"))
    }
    pub fn events(&self) -> String {
        self.under("events")
    }
    pub fn app_name_claim(&self, name: &str) -> String {
        format!("{}{name}", self.under("claims/apps"))
    }
    /// Every HTTP claim of `domain`: its `/` route and its path routes.
    pub fn http_claims(&self, domain: &str) -> String {
        format!("{}{domain}/", self.under("claims/http"))
    }
    /// `path` starts and ends with `/`.
    pub fn http_claim(&self, domain: &str, path: &str) -> String {
        format!("{}{domain}{path}", self.under("claims/http"))
    }
    pub fn tcp_claims(&self) -> String {
        self.under("claims/tcp")
    }
    pub fn tcp_claim(&self, port: u16) -> String {
        format!("{}{port}", self.tcp_claims())
    }

    pub async fn get<T: DeserializeOwned>(&self, key: &str) -> ApiResult<Option<Versioned<T>>> {
        match self.store.get(key).await? {
            Some(kv) => Ok(Some(decode(kv)?)),
            None => Ok(None),
        }
    }

    /// Every value under `prefix`; values that do not parse are logged and skipped.
    pub async fn list<T: DeserializeOwned>(&self, prefix: &str) -> ApiResult<Vec<Versioned<T>>> {
        let listing = self.store.range(prefix).await?;
        Ok(listing
            .kvs
            .into_iter()
            .filter_map(|kv| {
                let key = kv.key.clone();
                decode(kv)
                    .inspect_err(|e| tracing::warn!(%key, error = %e, "skipping a bad value"))
                    .ok()
            })
            .collect())
    }

    /// Writes `value` only if `key` does not exist; false if it does.
    pub async fn create<T: Serialize>(
        &self,
        key: &str,
        value: &T,
        lease: Option<LeaseId>,
    ) -> ApiResult<bool> {
        self.swap(key, 0, value, lease).await.map(|r| r.is_some())
    }

    /// Writes `value` only if `key`'s mod revision is `expected`; the new revision, or None.
    pub async fn swap<T: Serialize>(
        &self,
        key: &str,
        expected: Revision,
        value: &T,
        lease: Option<LeaseId>,
    ) -> ApiResult<Option<Revision>> {
        let bytes = encode(value)?;
        match self
            .store
            .compare_and_swap(key, expected, bytes, lease)
            .await?
        {
            Cas::Swapped { revision } => Ok(Some(revision)),
            Cas::Conflict { .. } => Ok(None),
        }
    }

    pub async fn put<T: Serialize>(
        &self,
        key: &str,
        value: &T,
        lease: Option<LeaseId>,
    ) -> ApiResult<Revision> {
        Ok(self.store.put(key, encode(value)?, lease).await?)
    }

    pub async fn delete(&self, key: &str) -> ApiResult<bool> {
        Ok(self.store.delete(key).await?)
    }

    pub async fn delete_if(&self, key: &str, expected: Revision) -> ApiResult<bool> {
        Ok(self.store.compare_and_delete(key, expected).await?)
    }

    /// Rewrites `key` with its own value, bumping its mod revision, if it is still at
    /// `expected`: how a dependent announces itself to a concurrent delete of what it depends on.
    pub async fn touch(&self, key: &str, expected: Revision) -> ApiResult<bool> {
        let Some(kv) = self.store.get(key).await? else {
            return Ok(false);
        };
        if kv.mod_revision != expected {
            return Ok(false);
        }
        let swapped = self
            .store
            .compare_and_swap(key, expected, kv.value, kv.lease)
            .await?;
        Ok(matches!(swapped, Cas::Swapped { .. }))
    }
}

pub fn encode<T: Serialize>(value: &T) -> ApiResult<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| ApiError::Internal(format!("cannot encode JSON: {e}")))
}

pub fn decode<T: DeserializeOwned>(kv: KeyValue) -> ApiResult<Versioned<T>> {
    let value = serde_json::from_slice(&kv.value).map_err(|e| {
        ApiError::Internal(format!("the store holds a bad value at {}: {e}", kv.key))
    })?;
    Ok(Versioned {
        value,
        mod_revision: kv.mod_revision,
        create_revision: kv.create_revision,
        lease: kv.lease,
    })
}

/// Now, as Flynn writes times: RFC 3339 in UTC.
pub fn now() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

/// Now in Unix milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
