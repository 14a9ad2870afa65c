//! The tower stack every RPC passes through, outermost first, and the call
//! layer: the deadline from the moment a call starts, the request read whole
//! and bounded, admission against the server-wide limit, and the answer to a
//! call still running when the shutdown grace ends.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::{HeaderMap, Request, Response};
use http_body_util::BodyExt;
use tokio::sync::{Semaphore, watch};
use tonic::Code;
use tonic::body::Body;
use tower::{Layer, Service, ServiceBuilder};
use tower_http::classify::GrpcFailureClass;
use tower_http::request_id::{MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer};
use tower_http::trace::{OnFailure, TraceLayer};

use crate::error::ApiError;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The longest `x-request-id` kept; longer ones are refused.
const MAX_REQUEST_ID: usize = 128;

/// How long after a call's deadline the call layer answers for it, so that
/// the handler's own answer (which names the store) wins when it has one.
const DEADLINE_SLACK: Duration = Duration::from_millis(25);

/// Services that are never shed, never limited and never buffered: probes
/// must answer exactly when the server is busy, and reflection streams.
const EXEMPT_SERVICES: [&str; 3] =
    ["/grpc.health.v1.Health/", "/grpc.reflection.v1.ServerReflection/", "/grpc.reflection.v1alpha.ServerReflection/"];

/// Wraps the routes in the stack. Order matters; each layer says why it is
/// where it is.
pub(crate) fn service<S>(
    routes: S,
    auth: crate::auth::AuthLayer,
    calls: CallPolicy,
) -> impl Service<Request<Body>, Response = Response<Body>, Error = std::convert::Infallible, Future = impl Send + 'static>
+ Clone
+ Send
+ 'static
where
    S: Service<Request<Body>, Response = Response<Body>, Error = std::convert::Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    ServiceBuilder::new()
        // First: an id the caller sent is logged and echoed, so it must be
        // bounded and printable before anything looks at it.
        .layer(RequestIdCheckLayer)
        // Keeps the caller's `x-request-id`, or makes one, so every log line
        // and the response carry it.
        .layer(SetRequestIdLayer::x_request_id(RequestIds::default()))
        // Echoes the id in the response headers so callers can quote it.
        .layer(PropagateRequestIdLayer::x_request_id())
        // One span per RPC, carrying the method and request id; inside the id
        // layers so the id is known, outside the call layer so shed and timed
        // out calls are traced too. Failures are logged at a level by cause.
        .layer(
            TraceLayer::new_for_grpc()
                .make_span_with(rpc_span as fn(&Request<Body>) -> tracing::Span)
                .on_failure(LogFailure),
        )
        // Who is calling, from headers and the client certificate alone:
        // inside the trace so refusals are logged with their request id and
        // the span names the tenant; before the call layer, so a stranger
        // never has its request read nor holds an admission permit.
        .layer(auth)
        // Deadline, bounded read, admission and the shutdown grace; last, so
        // that what it answers passes through the layers above.
        .layer(CallLayer { policy: Arc::new(calls) })
        .service(routes)
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn rpc_span(request: &Request<Body>) -> tracing::Span {
    // The check layer has refused ids that are not short and printable.
    let request_id = request.headers().get("x-request-id").and_then(|value| value.to_str().ok()).unwrap_or("");
    // The auth layer fills in who called; the trace id is the caller's
    // (traceparent) or a new one.
    let span = tracing::info_span!(
        "rpc",
        otel.kind = "server",
        rpc.system = "grpc",
        method = %request.uri().path(),
        request_id,
        tenant = tracing::field::Empty,
        credential = tracing::field::Empty,
        trace_id = tracing::field::Empty,
        rpc.grpc.status_code = tracing::field::Empty,
    );
    crate::telemetry::continue_trace(&span, request.headers());
    span
}

/// Logs a failed call at a level by its cause: a caller's mistake, a cancel
/// or a shed call is not a server error, and at load one line each at ERROR
/// drowns the ones that are.
#[derive(Clone, Copy, Debug)]
struct LogFailure;

impl OnFailure<GrpcFailureClass> for LogFailure {
    fn on_failure(&mut self, failure: GrpcFailureClass, latency: Duration, span: &tracing::Span) {
        let latency_ms = latency.as_secs_f64() * 1000.0;
        let code = match failure {
            GrpcFailureClass::Code(code) => {
                span.record("rpc.grpc.status_code", code.get());
                Code::from_i32(code.get())
            }
            GrpcFailureClass::Error(error) => {
                tracing::debug!(parent: span, %error, latency_ms, "rpc ended in a transport error");
                return;
            }
        };
        match severity(code) {
            Severity::Error => tracing::error!(parent: span, code = ?code, latency_ms, "rpc failed"),
            Severity::Warn => tracing::warn!(parent: span, code = ?code, latency_ms, "rpc failed"),
            Severity::Debug => tracing::debug!(parent: span, code = ?code, latency_ms, "rpc failed"),
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Severity {
    /// The server or a plugin is broken.
    Error,
    /// A store is failing or refuses the server's credentials: the operator
    /// can act.
    Warn,
    /// The caller's mistake, a cancel, a deadline, a shed call: the caller
    /// was told, and it is not the server's fault.
    Debug,
}

fn severity(code: Code) -> Severity {
    match code {
        Code::Internal | Code::Unknown | Code::DataLoss => Severity::Error,
        Code::Unavailable | Code::Unauthenticated | Code::PermissionDenied => Severity::Warn,
        Code::Ok
        | Code::Cancelled
        | Code::InvalidArgument
        | Code::DeadlineExceeded
        | Code::NotFound
        | Code::AlreadyExists
        | Code::ResourceExhausted
        | Code::FailedPrecondition
        | Code::Aborted
        | Code::OutOfRange
        | Code::Unimplemented => Severity::Debug,
    }
}

/// Whether a caller's `x-request-id` may be kept: 1 to 128 visible ASCII
/// characters. Anything else (control, bidi or line-separator characters,
/// any non-ASCII byte) could forge or garble log lines.
pub(crate) fn valid_request_id(value: &[u8]) -> bool {
    (1..=MAX_REQUEST_ID).contains(&value.len()) && value.iter().all(|byte| byte.is_ascii_graphic())
}

#[derive(Clone, Copy, Debug)]
struct RequestIdCheckLayer;

impl<S> Layer<S> for RequestIdCheckLayer {
    type Service = RequestIdCheck<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestIdCheck { inner }
    }
}

/// Refuses a call whose `x-request-id` is not [valid](valid_request_id).
#[derive(Clone, Debug)]
struct RequestIdCheck<S> {
    inner: S,
}

impl<S, B> Service<Request<Body>> for RequestIdCheck<S>
where
    S: Service<Request<Body>, Response = Response<B>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        if let Some(id) = request.headers().get("x-request-id")
            && !valid_request_id(id.as_bytes())
        {
            tracing::debug!(length = id.len(), "refused a call whose x-request-id is not printable or too long");
            let error = ApiError::InvalidArgument {
                field: "x-request-id".to_owned(),
                description: format!("must be 1 to {MAX_REQUEST_ID} visible ASCII characters"),
            };
            return Box::pin(std::future::ready(Ok(answer(error))));
        }
        let call = self.inner.call(request);
        Box::pin(async move { Ok(call.await?.map(Body::new)) })
    }
}

/// Request ids: a per-process random prefix and a counter, unique enough to
/// find one call in the logs of many replicas.
#[derive(Clone, Debug)]
pub(crate) struct RequestIds {
    prefix: Arc<str>,
    next: Arc<AtomicU64>,
}

impl Default for RequestIds {
    fn default() -> Self {
        let seed = std::collections::hash_map::RandomState::new();
        let prefix = format!("{:08x}", std::hash::BuildHasher::hash_one(&seed, std::process::id()) as u32);
        RequestIds { prefix: prefix.into(), next: Arc::new(AtomicU64::new(1)) }
    }
}

impl MakeRequestId for RequestIds {
    fn make_request_id<B>(&mut self, _request: &Request<B>) -> Option<RequestId> {
        let id = format!("{}-{}", self.prefix, self.next.fetch_add(1, Ordering::Relaxed));
        http::HeaderValue::from_str(&id).ok().map(RequestId::new)
    }
}

/// A call's deadline, fixed when the call starts (before its body arrives)
/// and handed to the handler in the request's extensions.
#[derive(Clone, Copy, Debug)]
pub(crate) struct CallDeadline(pub Instant);

/// What the call layer enforces.
#[derive(Debug)]
pub(crate) struct CallPolicy {
    /// The deadline of a call whose client set none.
    pub default_timeout: Duration,
    /// The longest deadline honoured.
    pub max_timeout: Duration,
    /// The largest request message.
    pub max_message_bytes: usize,
    /// Calls admitted at once across connections (`server.max_concurrent_requests`).
    pub admission: Arc<Semaphore>,
    /// The admission limit, for the error message.
    pub limit: usize,
    /// Turns true when the shutdown grace is over.
    pub grace_over: watch::Receiver<bool>,
    /// The full method paths the API serves (`/iapd.v1.PurchaseService/Verify`).
    pub methods: HashSet<String>,
}

impl CallPolicy {
    /// The call's deadline: the client's `grpc-timeout`, else the default,
    /// never more than the maximum. A client deadline is brought forward by a
    /// margin (a fifth, at most 100 ms) so that the answer, DEADLINE_EXCEEDED,
    /// reaches the client before its own timer fires, on a busy machine too,
    /// with time left for a client such as grpcurl to look up its details.
    pub(crate) fn deadline(&self, headers: &HeaderMap, now: Instant) -> Instant {
        let asked = headers.get("grpc-timeout").and_then(|value| value.to_str().ok()).and_then(parse_grpc_timeout);
        let budget = match asked {
            Some(asked) => asked.min(self.max_timeout).saturating_sub((asked / 5).min(Duration::from_millis(100))),
            None => self.default_timeout,
        };
        now + budget
    }
}

/// Parses a `grpc-timeout` header value: up to 8 digits and a unit.
fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let split = value.len().checked_sub(1)?;
    let (digits, unit) = value.split_at(split);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount * 3600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

#[derive(Clone, Debug)]
struct CallLayer {
    policy: Arc<CallPolicy>,
}

impl<S> Layer<S> for CallLayer {
    type Service = CallService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CallService { inner, policy: self.policy.clone() }
    }
}

/// For each API call: the deadline from the call's start, the request read
/// whole (bounded, within the deadline) before the call takes an admission
/// permit, so a client that never sends its body holds a stream of its own
/// connection and nothing of anyone else's; then the handler, answered for
/// if the deadline or the shutdown grace runs out first.
#[derive(Clone, Debug)]
struct CallService<S> {
    inner: S,
    policy: Arc<CallPolicy>,
}

impl<S> Service<Request<Body>> for CallService<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = std::convert::Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Result<Response<Body>, std::convert::Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        let path = request.uri().path();
        if EXEMPT_SERVICES.iter().any(|service| path.starts_with(service)) {
            return Box::pin(self.inner.call(request));
        }
        if !self.policy.methods.contains(path) {
            let error = ApiError::UnknownMethod { path: path.chars().take(256).collect() };
            return Box::pin(std::future::ready(Ok(answer(error))));
        }
        let policy = self.policy.clone();
        let deadline = policy.deadline(request.headers(), Instant::now());
        request.extensions_mut().insert(CallDeadline(deadline));
        // The clone that was made ready runs this call; the fresh one waits
        // for the next poll_ready.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let mut grace_over = policy.grace_over.clone();
            let call = async {
                let (parts, body) = request.into_parts();
                // A gRPC message is framed by 5 bytes.
                let limit = policy.max_message_bytes.saturating_add(5);
                let bytes = match http_body_util::Limited::new(body, limit).collect().await {
                    Ok(collected) => collected.to_bytes(),
                    Err(err) if err.is::<http_body_util::LengthLimitError>() => {
                        return Ok(answer(ApiError::MessageTooLarge { limit: policy.max_message_bytes }));
                    }
                    Err(err) => {
                        tracing::debug!(error = %err, "the request body did not arrive whole");
                        return Ok(answer(ApiError::RequestIncomplete));
                    }
                };
                let Ok(_admitted) = policy.admission.clone().try_acquire_owned() else {
                    return Ok(answer(ApiError::ServerOverloaded { limit: policy.limit }));
                };
                inner.call(Request::from_parts(parts, Body::new(http_body_util::Full::new(bytes)))).await
            };
            tokio::select! {
                answered = call => answered,
                () = tokio::time::sleep_until((deadline + DEADLINE_SLACK).into()) => Ok(answer(ApiError::CallDeadlineExceeded)),
                () = wait_for_true(&mut grace_over) => Ok(answer(ApiError::ShuttingDown)),
            }
        })
    }
}

fn answer(error: ApiError) -> Response<Body> {
    tonic::Status::from(error).into_http()
}

/// Resolves when the value turns true; never, if the sender is gone first.
async fn wait_for_true(receiver: &mut watch::Receiver<bool>) {
    if receiver.wait_for(|value| *value).await.is_err() {
        std::future::pending::<()>().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_values() {
        let cases = [
            ("100m", Some(Duration::from_millis(100))),
            ("2S", Some(Duration::from_secs(2))),
            ("1H", Some(Duration::from_secs(3600))),
            ("5M", Some(Duration::from_secs(300))),
            ("250u", Some(Duration::from_micros(250))),
            ("7n", Some(Duration::from_nanos(7))),
            ("123456789m", None),
            ("m", None),
            ("", None),
            ("10x", None),
        ];
        for (input, expected) in cases {
            assert_eq!(parse_grpc_timeout(input), expected, "grpc-timeout {input:?}");
        }
    }

    #[test]
    fn request_ids_are_short_and_printable() {
        let long = "a".repeat(MAX_REQUEST_ID + 1);
        let cases: [(&[u8], bool); 9] = [
            (b"abc-123", true),
            (b"0f3e:trace/1=x", true),
            (&long.as_bytes()[..MAX_REQUEST_ID], true),
            (long.as_bytes(), false),
            (b"", false),
            (b"has space", false),
            (b"tab\there", false),
            ("rtl\u{202e}override".as_bytes(), false),
            ("line\u{2028}separator".as_bytes(), false),
        ];
        for (id, valid) in cases {
            assert_eq!(valid_request_id(id), valid, "{:?}", String::from_utf8_lossy(id));
        }
    }

    #[test]
    fn failures_are_logged_by_cause() {
        let cases = [
            (Code::Internal, Severity::Error),
            (Code::Unknown, Severity::Error),
            (Code::Unavailable, Severity::Warn),
            (Code::Unauthenticated, Severity::Warn),
            (Code::InvalidArgument, Severity::Debug),
            (Code::Cancelled, Severity::Debug),
            (Code::ResourceExhausted, Severity::Debug),
            (Code::DeadlineExceeded, Severity::Debug),
            (Code::NotFound, Severity::Debug),
        ];
        for (code, expected) in cases {
            assert_eq!(severity(code), expected, "{code:?}");
        }
    }
}
