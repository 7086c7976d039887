//! Who may call what: the bearer token of `[http]` (RFC 6750,
//! `Authorization: Bearer <token>`).
//!
//! With a token set (`http.token_file` or `EDGELOOP__HTTP__TOKEN`),
//! `http.auth = "writes"` (the default) guards the requests that change what
//! the daemon learns or serves: `POST …/train`, `POST …/models/{v}/promote`,
//! `POST …/rollback` and `PUT …/models` (uploads). `"all"` guards every
//! request but `GET /healthz`, which liveness probes read, and the
//! dashboard's page and files (`GET /`, `/assets/…`: code, no data; a
//! browser cannot send a token when it navigates, so the page asks for it
//! and sends it with its own requests). Without a token
//! nothing is guarded; `check-config` and the daemon refuse that on a
//! listener beyond loopback ([`crate::config::HttpConfig::validate`]).
//!
//! A guarded request without the header (or with another scheme) gets 401
//! with `WWW-Authenticate: Bearer`, one with a wrong token 403; both answers
//! are JSON `{"error": …}` and counted (`edgeloop_http_auth_refused` in
//! `/metrics`, by status). The comparison is of SHA-256 digests in constant
//! time (`subtle`), so neither the token's bytes nor its length leak through
//! timing.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub use crate::config::HttpAuth;
use crate::stats::Stats;

/// The token and what it guards, shared by every request.
#[derive(Debug, Clone)]
pub struct Access {
    /// SHA-256 of the token; `None`: nothing is guarded.
    digest: Option<[u8; 32]>,
    scope: HttpAuth,
    /// Counts refusals ([`Stats::http_unauthorized`], [`Stats::http_forbidden`]).
    stats: Arc<Stats>,
}

impl Access {
    /// Guards `scope` with `token`; `None` guards nothing.
    pub fn new(token: Option<&str>, scope: HttpAuth, stats: Arc<Stats>) -> Self {
        Self {
            digest: token.map(|t| Sha256::digest(t.as_bytes()).into()),
            scope,
            stats,
        }
    }

    /// Nothing guarded (no token).
    pub fn open() -> Self {
        Self::new(None, HttpAuth::Writes, Arc::default())
    }

    /// Whether a request with `method` on `path` needs the token.
    pub fn guards(&self, method: &Method, path: &str) -> bool {
        if self.digest.is_none() {
            return false;
        }
        match self.scope {
            HttpAuth::All => path != "/healthz" && !super::dashboard::is_page(path),
            HttpAuth::Writes => is_write(method, path),
        }
    }

    /// `None` when the request may go on; otherwise the refusal.
    fn verdict(&self, req: &Request) -> Option<Response> {
        let digest = self.digest.as_ref()?;
        if !self.guards(req.method(), req.uri().path()) {
            return None;
        }
        let presented = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer);
        let Some(token) = presented else {
            self.stats.http_unauthorized.fetch_add(1, Ordering::Relaxed);
            let mut r = (
                StatusCode::UNAUTHORIZED,
                Json(serde_json::json!({
                    "error": "this request needs the daemon's token: \
                              header `Authorization: Bearer <token>` (http.token_file)"
                })),
            )
                .into_response();
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer realm=\"edgeloop\""),
            );
            return Some(r);
        };
        let given: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if bool::from(given.ct_eq(digest)) {
            return None;
        }
        self.stats.http_forbidden.fetch_add(1, Ordering::Relaxed);
        let mut r = (
            StatusCode::FORBIDDEN,
            Json(serde_json::json!({ "error": "wrong token" })),
        )
            .into_response();
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer realm=\"edgeloop\", error=\"invalid_token\""),
        );
        Some(r)
    }
}

/// Whether `method path` changes what the daemon learns or serves: every
/// POST, PUT, PATCH and DELETE but predictions (a POST that reads).
pub fn is_write(method: &Method, path: &str) -> bool {
    let mutating = matches!(
        *method,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    );
    mutating && !path.ends_with("/predict")
}

/// The token of an `Authorization` header value with the `Bearer` scheme
/// (case-insensitive, RFC 7235 §2.1).
fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// The middleware (`axum::middleware::from_fn_with_state`).
pub async fn check(State(access): State<Access>, req: Request, next: Next) -> Response {
    match access.verdict(&req) {
        Some(refusal) => refusal,
        None => next.run(req).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_are_what_changes_the_model() {
        let a = Access::new(Some("0123456789abcdef"), HttpAuth::Writes, Arc::default());
        let p = "/v1/pipelines/occupancy";
        assert!(a.guards(&Method::POST, &format!("{p}/train")));
        assert!(a.guards(&Method::POST, &format!("{p}/rollback")));
        assert!(a.guards(&Method::POST, &format!("{p}/models/3/promote")));
        assert!(a.guards(&Method::PUT, &format!("{p}/models")));
        assert!(!a.guards(&Method::POST, &format!("{p}/predict")));
        assert!(!a.guards(&Method::GET, &format!("{p}/models")));
        assert!(!a.guards(&Method::GET, "/metrics"));
        let all = Access::new(Some("0123456789abcdef"), HttpAuth::All, Arc::default());
        assert!(all.guards(&Method::GET, "/metrics"));
        assert!(all.guards(&Method::POST, &format!("{p}/predict")));
        assert!(!all.guards(&Method::GET, "/healthz"));
        assert!(!Access::open().guards(&Method::POST, &format!("{p}/train")));
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
        assert_eq!(bearer("abc"), None);
    }
}
