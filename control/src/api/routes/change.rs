//! What an update may change: service and flags, the certificate; never the type, domain,
//! path or port.

use flynn_store::types::Route;

use crate::api::certs::{self, CertChoice};
use crate::api::error::{ApiError, ApiResult};
use crate::api::tls;
use crate::api::types::{RouteKind, RouteUpdate, StoredRoute};
use crate::api::validate;
use crate::api::Shared;

/// The route after `update`, and the certificate it now needs, if that changed.
pub(super) async fn apply_update(
    state: &Shared,
    current: &StoredRoute,
    update: RouteUpdate,
) -> ApiResult<(StoredRoute, Option<CertChoice>)> {
    let mut next = current.clone();
    let mut cert = None;
    if let Some(service) = &update.service {
        validate::service(service)?;
    }
    let fixed = |field: &'static str| {
        ApiError::invalid(
            field,
            format!("a route's {field} cannot change: remove the route and add a new one"),
        )
    };
    match &mut next.route {
        Route::Http(r) => {
            if update.kind == Some(RouteKind::Tcp) {
                return Err(fixed("type"));
            }
            if let Some(domain) = &update.domain {
                if validate::domain(domain)? != r.domain {
                    return Err(fixed("domain"));
                }
            }
            if let Some(path) = &update.path {
                if validate::path(Some(path))? != r.path {
                    return Err(fixed("path"));
                }
            }
            if update.port.is_some_and(|p| p != 0) {
                return Err(ApiError::invalid("port", "an HTTP route has no port"));
            }
            if matches!(update.proxy_protocol, Some(Some(_))) {
                return Err(ApiError::invalid(
                    "proxy_protocol",
                    "only TCP routes send the PROXY protocol",
                ));
            }
            r.service = update.service.unwrap_or_else(|| r.service.clone());
            r.sticky = update.sticky.unwrap_or(r.sticky);
            r.leader = update.leader.unwrap_or(r.leader);
            r.drain_backends = update.drain_backends.unwrap_or(r.drain_backends);
            r.disable_keep_alives = update.disable_keep_alives.unwrap_or(r.disable_keep_alives);
            r.backend_protocol = update.backend_protocol.unwrap_or(r.backend_protocol);
            match (update.certificate, update.certificate_id) {
                (Some(_), Some(Some(_))) => {
                    return Err(ApiError::invalid(
                        "certificate",
                        "give a certificate or a certificate_id, not both",
                    ))
                }
                (Some(new), _) => {
                    let checked = tls::check(&new.cert, &new.key)?;
                    r.certificate_id = Some(checked.id.clone());
                    cert = Some(CertChoice::New(checked));
                }
                (None, Some(Some(id))) if r.certificate_id.as_ref() != Some(&id) => {
                    cert = certs::choose(state, None, Some(id.clone())).await?;
                    r.certificate_id = Some(id);
                }
                (None, Some(None)) => r.certificate_id = None,
                (None, _) => {}
            }
        }
        Route::Tcp(r) => {
            if update.kind == Some(RouteKind::Http) {
                return Err(fixed("type"));
            }
            if update.domain.is_some() || update.path.is_some() {
                return Err(ApiError::invalid(
                    "domain",
                    "a TCP route has no domain or path",
                ));
            }
            if update.port.is_some_and(|p| p != 0 && p != r.port) {
                return Err(fixed("port"));
            }
            if update.certificate.is_some() || matches!(update.certificate_id, Some(Some(_))) {
                return Err(ApiError::invalid(
                    "certificate",
                    "a TCP route has no certificate (TLS is for HTTP routes)",
                ));
            }
            if update.backend_protocol.is_some() {
                return Err(ApiError::invalid(
                    "backend_protocol",
                    "a TCP route has no backend protocol (it is for HTTP routes)",
                ));
            }
            if update.sticky == Some(true) || update.disable_keep_alives == Some(true) {
                return Err(ApiError::invalid(
                    "sticky",
                    "sticky sessions and keep-alive settings are for HTTP routes",
                ));
            }
            r.service = update.service.unwrap_or_else(|| r.service.clone());
            r.leader = update.leader.unwrap_or(r.leader);
            if let Some(proxy_protocol) = update.proxy_protocol {
                r.proxy_protocol = proxy_protocol;
            }
        }
    }
    Ok((next, cert))
}
