//! Who may call, and what they may reach.
//!
//! Health and reflection are open to all. A caller is a tenant's API key (`authorization: Bearer <key>` or
//! `x-api-key` metadata) or a tenant's client certificate (mutual TLS). The
//! auth layer finds the caller once per call, before the request is read,
//! and refuses the RPCs its credential does not list; each handler then
//! checks the store and app the request names ([`Caller::check`]) and scopes
//! ledger reads to the caller's apps ([`Caller::apps`]). Only SHA-256 hashes
//! of keys are known; a key never reaches a log line or an error.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderMap, Request, Response};
use tonic::body::Body;
use tower::{Layer, Service};

use crate::config::{AuthConfig, AuthMode, Scope};
use crate::error::{ApiError, AuthFailure};
use crate::ledger::AppScope;

/// Every key starts with this, so that secret scanners can find one pasted
/// where it should not be.
pub const KEY_PREFIX: &str = "iapd_";

/// The longest credential metadata read.
const MAX_KEY_BYTES: usize = 256;

/// Calls to these are never authenticated: probes must answer whoever asks,
/// and reflection describes only the public API (grpcurl needs it to call
/// health by name).
const OPEN_SERVICES: [&str; 3] =
    ["/grpc.health.v1.Health/", "/grpc.reflection.v1.ServerReflection/", "/grpc.reflection.v1alpha.ServerReflection/"];

/// The API's service path prefix.
const API_PREFIX: &str = "/iapd.v1.PurchaseService/";

/// A new API key and the SHA-256 to put in the configuration.
pub fn mint_key() -> Result<(String, String), ring::error::Unspecified> {
    let mut secret = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret)?;
    let key = format!("{KEY_PREFIX}{}", hex(&secret));
    let hash = hex(&sha256(key.as_bytes()));
    Ok((key, hash))
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut hash = [0u8; 32];
    hash.copy_from_slice(digest.as_ref());
    hash
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// One tenant's credential, as the configuration gives it.
#[derive(Debug)]
pub(crate) struct Credential {
    /// The tenant's name.
    pub tenant: String,
    /// The credential's name in the tenant.
    pub name: String,
    kind: &'static str,
    stores: Option<BTreeSet<String>>,
    /// The apps it may reach: its own list, else all of its tenant's.
    apps: Arc<BTreeSet<String>>,
    rpcs: Option<BTreeSet<String>>,
}

impl Credential {
    fn new(tenant: &str, name: &str, kind: &'static str, scope: &Scope, tenant_apps: &BTreeSet<String>) -> Self {
        Credential {
            tenant: tenant.to_owned(),
            name: name.to_owned(),
            kind,
            stores: scope.stores.clone(),
            apps: Arc::new(scope.apps.clone().unwrap_or_else(|| tenant_apps.clone())),
            rpcs: scope.rpcs.clone(),
        }
    }

    fn describe(&self) -> String {
        format!("{} `{}` of tenant `{}`", self.kind, self.name, self.tenant)
    }
}

/// Who is calling.
#[derive(Debug, Clone)]
pub(crate) enum Caller {
    /// Authentication is off: anyone who reaches the port.
    Anyone,
    /// iapd itself (the acknowledger).
    Internal,
    /// A tenant's key or certificate.
    Tenant(Arc<Credential>),
}

impl Caller {
    fn may_call(&self, rpc: &str) -> bool {
        match self {
            Caller::Anyone | Caller::Internal => true,
            Caller::Tenant(credential) => credential.rpcs.as_ref().is_none_or(|rpcs| rpcs.contains(rpc)),
        }
    }

    /// Whether the caller may use this store at all; a store it may not use
    /// is not named to it, so it cannot tell whether the store exists.
    pub(crate) fn may_use_store(&self, store: &str) -> bool {
        match self {
            Caller::Anyone | Caller::Internal => true,
            Caller::Tenant(credential) => credential.stores.as_ref().is_none_or(|stores| stores.contains(store)),
        }
    }

    /// Refuses a store or app outside the caller's scope, without saying
    /// whether it exists.
    pub(crate) fn check(&self, store: Option<&str>, app_id: &str) -> Result<(), ApiError> {
        let Caller::Tenant(credential) = self else { return Ok(()) };
        if let Some(store) = store
            && !self.may_use_store(store)
        {
            return Err(ApiError::PermissionDenied {
                reason: "STORE_NOT_PERMITTED",
                message: format!("{} may not use store `{store}`", credential.describe()),
            });
        }
        if !credential.apps.contains(app_id) {
            return Err(ApiError::PermissionDenied {
                reason: "APP_NOT_PERMITTED",
                message: format!("{} may not use app `{app_id}`", credential.describe()),
            });
        }
        Ok(())
    }

    /// The apps whose ledger entries the caller may see.
    pub(crate) fn apps(&self) -> AppScope {
        match self {
            Caller::Anyone | Caller::Internal => AppScope::All,
            Caller::Tenant(credential) => AppScope::Only(credential.apps.clone()),
        }
    }

    /// The caller of a request, put there by the auth layer; a request that
    /// bypassed it is refused, never let through.
    pub(crate) fn of<T>(request: &tonic::Request<T>) -> Result<Caller, ApiError> {
        request.extensions().get::<Caller>().cloned().ok_or(ApiError::Unauthenticated(AuthFailure::Missing))
    }
}

/// The names a verified client certificate carries (its DNS subject
/// alternative names and its subject's common name, lowercase), put in each
/// request's extensions by the transport.
#[derive(Debug, Clone, Default)]
pub(crate) struct ClientNames(pub Arc<Vec<String>>);

/// Finds callers from their credentials.
#[derive(Debug)]
pub(crate) struct Authenticator {
    mode: AuthMode,
    keys: HashMap<[u8; 32], Key>,
    clients: HashMap<String, Arc<Credential>>,
}

#[derive(Debug)]
enum Key {
    Active(Arc<Credential>),
    Revoked { tenant: String, name: String },
}

impl Authenticator {
    pub(crate) fn new(config: &AuthConfig, mode: AuthMode) -> Self {
        let mut keys = HashMap::new();
        let mut clients = HashMap::new();
        for (tenant, settings) in &config.tenants {
            for (name, key) in &settings.keys {
                let entry = if key.revoked {
                    Key::Revoked { tenant: tenant.clone(), name: name.clone() }
                } else {
                    Key::Active(Arc::new(Credential::new(tenant, name, "api key", &key.scope, &settings.apps)))
                };
                keys.insert(key.sha256, entry);
            }
            for (name, client) in &settings.clients {
                let credential = Credential::new(tenant, name, "client certificate", &client.scope, &settings.apps);
                clients.insert(client.subject.clone(), Arc::new(credential));
            }
        }
        Authenticator { mode, keys, clients }
    }

    /// The caller of a call with these headers and client certificate names.
    /// A key, when sent, decides; else the certificate.
    fn caller(&self, headers: &HeaderMap, client: Option<&ClientNames>) -> Result<Caller, AuthFailure> {
        if self.mode == AuthMode::Off {
            return Ok(Caller::Anyone);
        }
        if let Some(key) = presented_key(headers)? {
            return match self.keys.get(&sha256(key)) {
                Some(Key::Active(credential)) => Ok(Caller::Tenant(credential.clone())),
                Some(Key::Revoked { tenant, name }) => {
                    Err(AuthFailure::RevokedKey { tenant: tenant.clone(), name: name.clone() })
                }
                None => Err(AuthFailure::UnknownKey),
            };
        }
        match client {
            Some(names) => names
                .0
                .iter()
                .find_map(|name| self.clients.get(name))
                .map(|credential| Caller::Tenant(credential.clone()))
                .ok_or(AuthFailure::UnmappedCertificate),
            None => Err(AuthFailure::Missing),
        }
    }
}

/// The key in `authorization: Bearer <key>` or `x-api-key: <key>`, if any;
/// both, unless equal, or either malformed, is refused.
fn presented_key(headers: &HeaderMap) -> Result<Option<&[u8]>, AuthFailure> {
    let bearer = match headers.get(http::header::AUTHORIZATION) {
        None => None,
        Some(value) => {
            let value = value.as_bytes();
            let Some(key) = value.strip_prefix(b"Bearer ").or_else(|| value.strip_prefix(b"bearer ")) else {
                return Err(AuthFailure::Malformed("the `authorization` metadata is not `Bearer <key>`"));
            };
            Some(key)
        }
    };
    let api_key = headers.get("x-api-key").map(http::HeaderValue::as_bytes);
    let key = match (bearer, api_key) {
        (Some(a), Some(b)) if a != b => {
            return Err(AuthFailure::Malformed("`authorization` and `x-api-key` carry different keys"));
        }
        (Some(key), _) | (None, Some(key)) => key,
        (None, None) => return Ok(None),
    };
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(AuthFailure::Malformed("the api key is empty or too long"));
    }
    Ok(Some(key))
}

/// Authenticates every call but health before anything else reads it.
#[derive(Debug, Clone)]
pub(crate) struct AuthLayer {
    pub authenticator: Arc<Authenticator>,
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService { inner, authenticator: self.authenticator.clone() }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct AuthService<S> {
    inner: S,
    authenticator: Arc<Authenticator>,
}

impl<S> Service<Request<Body>> for AuthService<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = std::convert::Infallible>,
    S::Future: Send + Unpin + 'static,
{
    type Response = Response<Body>;
    type Error = std::convert::Infallible;
    type Future =
        futures_either::Either<S::Future, std::future::Ready<Result<Response<Body>, std::convert::Infallible>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        let path = request.uri().path();
        if OPEN_SERVICES.iter().any(|service| path.starts_with(service)) {
            return futures_either::Either::Left(self.inner.call(request));
        }
        let refuse = |error: ApiError| {
            futures_either::Either::Right(std::future::ready(Ok(tonic::Status::from(error).into_http())))
        };
        let caller = match self.authenticator.caller(request.headers(), request.extensions().get::<ClientNames>()) {
            Ok(caller) => caller,
            Err(failure) => return refuse(ApiError::Unauthenticated(failure)),
        };
        if let Caller::Tenant(credential) = &caller {
            let span = tracing::Span::current();
            span.record("tenant", credential.tenant.as_str());
            span.record("credential", credential.name.as_str());
            if let Some(rpc) = path.strip_prefix(API_PREFIX)
                && !caller.may_call(rpc)
            {
                return refuse(ApiError::PermissionDenied {
                    reason: "RPC_NOT_PERMITTED",
                    message: format!("{} may not call {rpc}", credential.describe()),
                });
            }
        }
        request.extensions_mut().insert(caller);
        futures_either::Either::Left(self.inner.call(request))
    }
}

/// A future of one of two types, so that no path is boxed.
mod futures_either {
    use std::future::Future;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    #[derive(Debug)]
    pub(crate) enum Either<A, B> {
        Left(A),
        Right(B),
    }

    impl<A: Future + Unpin, B: Future<Output = A::Output> + Unpin> Future for Either<A, B> {
        type Output = A::Output;

        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<A::Output> {
            match self.get_mut() {
                Either::Left(a) => Pin::new(a).poll(cx),
                Either::Right(b) => Pin::new(b).poll(cx),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_keys_hash_to_what_is_printed() {
        let (key, hash) = mint_key().expect("random");
        assert!(key.starts_with(KEY_PREFIX) && key.len() == KEY_PREFIX.len() + 64, "{}", key.len());
        assert_eq!(hex(&sha256(key.as_bytes())), hash);
        assert_ne!(mint_key().expect("random").0, key, "each key is new");
    }

    #[test]
    fn presented_keys() {
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut map = HeaderMap::new();
            for (name, value) in pairs {
                map.insert(*name, http::HeaderValue::from_static(value));
            }
            map
        };
        let long = Box::leak(format!("Bearer {}", "k".repeat(MAX_KEY_BYTES + 1)).into_boxed_str());
        type Pairs<'a> = &'a [(&'static str, &'static str)];
        type Expected = Result<Option<&'static [u8]>, ()>;
        let long_pair = [("authorization", &*long)];
        let cases: [(Pairs<'_>, Expected); 8] = [
            (&[], Ok(None)),
            (&[("authorization", "Bearer iapd_1")], Ok(Some(b"iapd_1"))),
            (&[("authorization", "bearer iapd_1")], Ok(Some(b"iapd_1"))),
            (&[("x-api-key", "iapd_2")], Ok(Some(b"iapd_2"))),
            (&[("authorization", "Bearer iapd_3"), ("x-api-key", "iapd_3")], Ok(Some(b"iapd_3"))),
            (&[("authorization", "Bearer iapd_3"), ("x-api-key", "iapd_4")], Err(())),
            (&[("authorization", "Basic dXNlcg==")], Err(())),
            (&long_pair, Err(())),
        ];
        for (pairs, expected) in cases {
            let map = headers(pairs);
            assert_eq!(presented_key(&map).map_err(|_| ()), expected, "{pairs:?}");
        }
    }
}
