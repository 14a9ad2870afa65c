//! OpenTelemetry: the real binary exports over OTLP/gRPC to a collector in
//! this test's process; the span tree of one Verify against the Google Play
//! emulator continues the caller's `traceparent` down to each upstream
//! HTTP request, parent ids included, and the RPC's metrics arrive with
//! their labels.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use iapd::pb;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{ExportMetricsServiceRequest, ExportMetricsServiceResponse};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::metric;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;

use crate::support::{Server, token};

/// What the collector received.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Span>>>,
    metrics: Arc<Mutex<Vec<opentelemetry_proto::tonic::metrics::v1::Metric>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let spans = request.into_inner().resource_spans.into_iter().flat_map(|resource| resource.scope_spans);
        self.spans.lock().unwrap().extend(spans.flat_map(|scope| scope.spans));
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let metrics = request.into_inner().resource_metrics.into_iter().flat_map(|resource| resource.scope_metrics);
        self.metrics.lock().unwrap().extend(metrics.flat_map(|scope| scope.metrics));
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

async fn start_collector() -> (Collector, std::net::SocketAddr) {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let server = tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(collector.clone()))
        .add_service(MetricsServiceServer::new(collector.clone()))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
    tokio::spawn(server);
    (collector, address)
}

fn attribute<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a any_value::Value> {
    attributes.iter().find(|kv| kv.key == key).and_then(|kv| kv.value.as_ref()).and_then(|v| v.value.as_ref())
}

fn text(attributes: &[KeyValue], key: &str) -> String {
    match attribute(attributes, key) {
        Some(any_value::Value::StringValue(text)) => text.clone(),
        Some(any_value::Value::IntValue(number)) => number.to_string(),
        other => format!("{other:?}"),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

const TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";
const CALLER_SPAN: &str = "b7ad6b7169203331";

#[tokio::test]
async fn one_verify_is_one_trace_from_the_callers_span_to_each_upstream_request() {
    let (collector, address) = start_collector().await;
    let configured = crate::google_play::configured(&format!(
        "\n[telemetry]\notlp_endpoint = \"http://{address}\"\nexport_interval_ms = 200\n"
    ));
    let server = Server::start(Some(&configured.config), &[]);
    let mut client = server.client().await;
    let mut request = tonic::Request::new(pb::VerifyRequest {
        store: "google-play".into(),
        app_id: "com.example.game".into(),
        product_id: "coins_100".into(),
        proof: token("gp-purchased"),
        user_id: "user-42".into(),
    });
    request.metadata_mut().insert("traceparent", format!("00-{TRACE_ID}-{CALLER_SPAN}-01").parse().unwrap());
    let answer = client.verify(request).await.expect("verify").into_inner();
    assert_eq!(answer.verdict(), pb::Verdict::Valid, "{}", answer.verdict_reason);

    // The batch goes out within the export interval.
    let started = Instant::now();
    let spans = loop {
        let spans: Vec<Span> =
            collector.spans.lock().unwrap().iter().filter(|span| hex(&span.trace_id) == TRACE_ID).cloned().collect();
        let named = |name: &str| spans.iter().any(|span| span.name == name);
        if named("rpc") && named("plugin_call") && named("upstream") {
            break spans;
        }
        assert!(started.elapsed() < Duration::from_secs(15), "spans did not arrive: {spans:#?}\n{}", server.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let one = |name: &str| {
        let found: Vec<&Span> = spans.iter().filter(|span| span.name == name).collect();
        assert_eq!(found.len(), 1, "one {name} span: {found:#?}");
        found[0]
    };
    let rpc = one("rpc");
    assert_eq!(hex(&rpc.parent_span_id), CALLER_SPAN, "the rpc continues the caller's span");
    assert_eq!(rpc.kind(), SpanKind::Server);
    assert_eq!(text(&rpc.attributes, "method"), "/iapd.v1.PurchaseService/Verify");
    let call = one("plugin_call");
    assert_eq!(call.parent_span_id, rpc.span_id, "the plugin call is the rpc's child");
    assert_eq!(text(&call.attributes, "store"), "google-play");
    let upstream: Vec<&Span> = spans.iter().filter(|span| span.name == "upstream").collect();
    assert!(upstream.len() >= 2, "the token exchange and the purchase lookup: {upstream:#?}");
    for request in &upstream {
        assert_eq!(request.parent_span_id, call.span_id, "an upstream request is the plugin call's child");
        assert_eq!(request.kind(), SpanKind::Client);
        assert_eq!(text(&request.attributes, "store"), "google-play");
        assert_eq!(text(&request.attributes, "http.response.status_code"), "200");
        assert_eq!(text(&request.attributes, "attempt"), "1");
        assert_eq!(text(&request.attributes, "retry_wait_ms"), "0");
        assert!(request.start_time_unix_nano >= call.start_time_unix_nano);
        assert!(request.end_time_unix_nano <= call.end_time_unix_nano);
    }
    assert!(
        upstream.iter().any(|request| text(&request.attributes, "url.path").contains("/purchases/products/")),
        "{upstream:#?}"
    );
    // Every log line of the call carries the trace id.
    assert!(server.logs().contains(&format!("trace_id={TRACE_ID}")), "{}", server.logs());

    let started = Instant::now();
    loop {
        let counted = collector.metrics.lock().unwrap().iter().any(|metric| {
            let Some(metric::Data::Sum(sum)) = &metric.data else { return false };
            metric.name == "iapd.rpc.requests"
                && sum.data_points.iter().any(|point| {
                    text(&point.attributes, "rpc.method") == "Verify"
                        && text(&point.attributes, "store") == "google-play"
                        && text(&point.attributes, "verdict") == "VERDICT_VALID"
                        && text(&point.attributes, "rpc.grpc.status_code") == "Ok"
                })
        });
        let names: Vec<String> = collector.metrics.lock().unwrap().iter().map(|metric| metric.name.clone()).collect();
        let has = |name: &str| names.iter().any(|found| found == name);
        if counted && has("iapd.upstream.duration") && has("iapd.store.in_flight") && has("iapd.ledger.batch.size") {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(15), "metrics did not arrive: {names:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn json_logs_carry_the_callers_trace_id_without_an_exporter() {
    let server = Server::start(None, &[("IAPD_TELEMETRY__LOG_FORMAT", "json")]);
    let mut client = server.client().await;
    let mut request = tonic::Request::new(crate::support::verify("no-such-store", "coins_100", "purchased-1"));
    request.metadata_mut().insert("traceparent", format!("00-{TRACE_ID}-{CALLER_SPAN}-01").parse().unwrap());
    client.verify(request).await.expect_err("an unknown store");
    assert!(server.wait_for_log(TRACE_ID), "{}", server.logs());
    let lines: Vec<serde_json::Value> = server
        .logs()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|err| panic!("{err}: {line}")))
        .collect();
    let traced = lines.iter().find(|line| line.to_string().contains(TRACE_ID)).unwrap();
    let rpc = traced["spans"].as_array().and_then(|spans| spans.iter().find(|span| span["name"] == "rpc")).unwrap();
    assert_eq!(rpc["trace_id"], TRACE_ID, "{traced}");
    assert_eq!(rpc["method"], "/iapd.v1.PurchaseService/Verify", "{traced}");
    assert!(rpc["request_id"].as_str().is_some_and(|id| !id.is_empty()), "{traced}");
}
