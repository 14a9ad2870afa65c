//! The tower stack every RPC passes through, outermost first.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use http::Request;
use tower::ServiceBuilder;
use tower::layer::util::{Identity, Stack};
use tower::limit::GlobalConcurrencyLimitLayer;
use tower::load_shed::LoadShedLayer;
use tower_http::classify::{GrpcErrorsAsFailures, SharedClassifier};
use tower_http::request_id::{MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

type Stack5 = Stack<
    GlobalConcurrencyLimitLayer,
    Stack<
        LoadShedLayer,
        Stack<
            TraceLayer<SharedClassifier<GrpcErrorsAsFailures>, fn(&Request<tonic::body::Body>) -> tracing::Span>,
            Stack<PropagateRequestIdLayer, Stack<SetRequestIdLayer<RequestIds>, Identity>>,
        >,
    >,
>;

/// Builds the stack. Order matters; each layer says why it is where it is.
pub(crate) fn stack(max_concurrent_requests: usize) -> Stack5 {
    ServiceBuilder::new()
        // First, so that every log line and the response carry the id: keeps
        // an `x-request-id` the caller sent, or makes one.
        .layer(SetRequestIdLayer::x_request_id(RequestIds::default()))
        // Echoes the id in the response headers so callers can quote it.
        .layer(PropagateRequestIdLayer::x_request_id())
        // One span per RPC, carrying the method and request id; inside the id
        // layers so the id is known, outside the limits so shed calls are
        // traced too.
        .layer(TraceLayer::new_for_grpc().make_span_with(rpc_span as fn(&Request<tonic::body::Body>) -> tracing::Span))
        // Sheds instead of queueing when the limit below is full: a queued
        // verification would likely miss its deadline anyway. tonic answers
        // RESOURCE_EXHAUSTED for a shed call.
        .layer(LoadShedLayer::new())
        // At most this many RPCs in flight, across all connections (the
        // per-connection limit tonic offers would not bound the whole server).
        .layer(GlobalConcurrencyLimitLayer::new(max_concurrent_requests))
        .into_inner()
}

fn rpc_span(request: &Request<tonic::body::Body>) -> tracing::Span {
    let request_id = request.headers().get("x-request-id").and_then(|value| value.to_str().ok()).unwrap_or("");
    tracing::info_span!("rpc", method = %request.uri().path(), request_id)
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
