//! What iapd tells operators: log lines (text or JSON) and, when
//! `telemetry.otlp_endpoint` is set, OpenTelemetry traces and metrics
//! exported over OTLP/gRPC.
//!
//! Traces are the `tracing` spans the server already makes (`rpc`, then
//! `plugin_call`, then `upstream` for each HTTP request the host sends for a
//! plugin), bridged by `tracing-opentelemetry`; an RPC continues the trace
//! of the caller's W3C `traceparent`. Metrics are recorded through the
//! global meter, which is a no-op until [`init`] installs the exporter.

use std::sync::LazyLock;
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// The most verbose level the log filter keeps, once [`init`] has run.
static LOG_LEVEL: std::sync::OnceLock<tracing::level_filters::LevelFilter> = std::sync::OnceLock::new();

/// The most verbose level a log line can be kept at: what plugins are told
/// to log at. With export on, the subscriber lets iapd's DEBUG spans through
/// whatever the log filter says; plugins formatting DEBUG lines that the log
/// filter then drops would cost every call.
pub(crate) fn log_level() -> tracing::level_filters::LevelFilter {
    LOG_LEVEL.get().copied().unwrap_or_else(tracing::level_filters::LevelFilter::current)
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// One human-readable line per event (the default).
    #[default]
    Text,
    /// One JSON object per line, with the fields of the spans it happened in
    /// (the RPC's `trace_id` and `request_id` among them).
    Json,
}

/// The settings of `telemetry.*`.
#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    /// The OTLP/gRPC collector, such as `http://127.0.0.1:4317`; no export when `None`.
    pub otlp_endpoint: Option<String>,
    /// `service.name` of what is exported.
    pub service_name: String,
    /// How often spans and metrics are sent.
    pub export_interval: Duration,
    /// The share of traces exported that start here (0 to 1); a caller's
    /// `traceparent` decides for its own.
    pub trace_sample_ratio: f64,
    /// How log lines are written.
    pub log_format: LogFormat,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            otlp_endpoint: None,
            service_name: "iapd".to_owned(),
            export_interval: Duration::from_secs(5),
            trace_sample_ratio: 1.0,
            log_format: LogFormat::Text,
        }
    }
}

/// Why telemetry could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The OTLP exporter refused its settings.
    #[error("telemetry.otlp_endpoint: cannot export to `{endpoint}`: {reason}")]
    Exporter {
        /// The endpoint.
        endpoint: String,
        /// What the exporter said.
        reason: String,
    },
    /// A global subscriber was installed already.
    #[error("cannot install the log subscriber: {0}")]
    Subscriber(String),
}

/// The exporters, flushed when dropped.
#[derive(Debug, Default)]
pub struct Telemetry {
    tracer: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
    meter: Option<opentelemetry_sdk::metrics::SdkMeterProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        // What is still batched goes out before the process ends.
        if let Some(tracer) = self.tracer.take() {
            let _ = tracer.shutdown();
        }
        if let Some(meter) = self.meter.take() {
            let _ = meter.shutdown();
        }
    }
}

/// Installs the global log subscriber with `filter` and, with an endpoint,
/// the OTLP exporters. With an endpoint it must run inside a tokio runtime,
/// which the exporter's connection lives on.
pub fn init(filter: tracing_subscriber::EnvFilter, config: &TelemetryConfig) -> Result<Telemetry, TelemetryError> {
    let _ = LOG_LEVEL.set(filter.max_level_hint().unwrap_or(tracing::level_filters::LevelFilter::TRACE));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let logs = match config.log_format {
        LogFormat::Text => tracing_subscriber::fmt::layer().with_ansi(ansi).with_writer(std::io::stderr).boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(false)
            .with_span_list(true)
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let Some(endpoint) = &config.otlp_endpoint else {
        tracing_subscriber::registry()
            .with(filter)
            .with(logs)
            .try_init()
            .map_err(|err| TelemetryError::Subscriber(err.to_string()))?;
        return Ok(Telemetry::default());
    };
    let exporter_error =
        |err: &dyn std::fmt::Display| TelemetryError::Exporter { endpoint: endpoint.clone(), reason: err.to_string() };
    let resource = opentelemetry_sdk::Resource::builder().with_service_name(config.service_name.clone()).build();
    let spans = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .map_err(|err| exporter_error(&err))?;
    let batches = opentelemetry_sdk::trace::BatchSpanProcessor::builder(spans)
        .with_batch_config(
            opentelemetry_sdk::trace::BatchConfigBuilder::default()
                .with_scheduled_delay(config.export_interval)
                .build(),
        )
        .build();
    let sampler = opentelemetry_sdk::trace::Sampler::ParentBased(Box::new(
        opentelemetry_sdk::trace::Sampler::TraceIdRatioBased(config.trace_sample_ratio),
    ));
    let tracer = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_sampler(sampler)
        .with_span_processor(batches)
        .with_resource(resource.clone())
        .build();
    let metrics = opentelemetry_otlp::MetricExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .map_err(|err| exporter_error(&err))?;
    let reader =
        opentelemetry_sdk::metrics::PeriodicReader::builder(metrics).with_interval(config.export_interval).build();
    let meter =
        opentelemetry_sdk::metrics::SdkMeterProvider::builder().with_reader(reader).with_resource(resource).build();
    opentelemetry::global::set_meter_provider(meter.clone());
    // Spans are exported from iapd's own code down to the plugin calls and
    // upstream requests (DEBUG), whatever the log filter says; log lines keep
    // to the log filter. Filters are global, not per layer: a per-layer
    // filter loses the event after a `tracing::enabled!` check (sqlx makes
    // one before each query), so log lines would go missing.
    let global = tracing_subscriber::EnvFilter::builder()
        .parse(format!("{filter},iapd=debug"))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,iapd=debug"));
    // Per span only what the span says: no source location, thread, target
    // or busy/idle times, and no OpenTelemetry context entered on every poll
    // (no other instrumentation here reads it). Each of those costs on every
    // call (BENCHMARKS.md (8)).
    let traces = tracing_opentelemetry::layer()
        .with_tracer(tracer.tracer("iapd"))
        .with_location(false)
        .with_threads(false)
        .with_target(false)
        .with_tracked_inactivity(false)
        .with_context_activation(false);
    tracing_subscriber::registry()
        .with(global)
        .with(EventGate { inner: logs, filter })
        .with(traces)
        .try_init()
        .map_err(|err| TelemetryError::Subscriber(err.to_string()))?;
    Ok(Telemetry { tracer: Some(tracer), meter: Some(meter) })
}

/// A layer that sees every span but only the events `filter` enables: the
/// log lines at the log filter's level while spans reach the exporter.
struct EventGate<L> {
    inner: L,
    filter: tracing_subscriber::EnvFilter,
}

impl<S, L> tracing_subscriber::Layer<S> for EventGate<L>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    L: tracing_subscriber::Layer<S>,
{
    fn on_register_dispatch(&self, subscriber: &tracing::Dispatch) {
        self.inner.on_register_dispatch(subscriber);
    }

    fn on_layer(&mut self, subscriber: &mut S) {
        self.inner.on_layer(subscriber);
    }

    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        self.inner.on_new_span(attrs, id, ctx);
    }

    fn on_record(
        &self,
        span: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        self.inner.on_record(span, values, ctx);
    }

    fn on_event(&self, event: &tracing::Event<'_>, ctx: tracing_subscriber::layer::Context<'_, S>) {
        if tracing_subscriber::Layer::<S>::enabled(&self.filter, event.metadata(), ctx.clone()) {
            self.inner.on_event(event, ctx);
        }
    }

    fn on_enter(&self, id: &tracing::span::Id, ctx: tracing_subscriber::layer::Context<'_, S>) {
        self.inner.on_enter(id, ctx);
    }

    fn on_exit(&self, id: &tracing::span::Id, ctx: tracing_subscriber::layer::Context<'_, S>) {
        self.inner.on_exit(id, ctx);
    }

    fn on_close(&self, id: tracing::span::Id, ctx: tracing_subscriber::layer::Context<'_, S>) {
        self.inner.on_close(id, ctx);
    }
}

/// The trace the caller's `traceparent` header names, made the parent of
/// `span`; the span's `trace_id` field then carries the trace's id into
/// every log line of the call (the caller's, when nothing is exported).
pub(crate) fn continue_trace(span: &tracing::Span, headers: &http::HeaderMap) {
    use opentelemetry::propagation::TextMapPropagator as _;
    use opentelemetry::trace::TraceContextExt as _;
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let parent = opentelemetry_sdk::propagation::TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    let caller = parent.span().span_context().trace_id();
    if caller != opentelemetry::trace::TraceId::INVALID {
        let _ = span.set_parent(parent);
    }
    // Valid only where spans are exported.
    let own = span.context().span().span_context().trace_id();
    let trace_id = if own == opentelemetry::trace::TraceId::INVALID { caller } else { own };
    if trace_id != opentelemetry::trace::TraceId::INVALID {
        span.record("trace_id", tracing::field::display(trace_id));
    }
}

/// Reads W3C trace context from request headers.
struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl opentelemetry::propagation::Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// The instruments, made from the global meter on first use.
pub(crate) struct Metrics {
    /// RPCs answered, by method, store, verdict and code.
    pub rpcs: Counter<u64>,
    /// How long RPCs took, by method, store and code.
    pub rpc_duration: Histogram<f64>,
    /// How long each HTTP request sent for a plugin took, by store, method and status.
    pub upstream_duration: Histogram<f64>,
    /// HTTP requests that repeat an earlier one of the same call (a plugin's retry), by store.
    pub upstream_retries: Counter<u64>,
    /// How long a plugin waited before a retry, by store.
    pub upstream_retry_wait: Histogram<f64>,
    /// How long HTTP requests waited for room in their store's quota, by store.
    pub rate_limit_wait: Histogram<f64>,
    /// Calls ended because their store's quota had no room before their deadline, by store.
    pub rate_limited: Counter<u64>,
    /// Verifies per ledger batch.
    pub ledger_batch_size: Histogram<u64>,
    /// How long a ledger batch took to commit.
    pub ledger_batch_duration: Histogram<f64>,
}

pub(crate) static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let meter = opentelemetry::global::meter("iapd");
    Metrics {
        rpcs: meter.u64_counter("iapd.rpc.requests").with_description("RPCs answered").build(),
        rpc_duration: meter.f64_histogram("iapd.rpc.duration").with_unit("s").build(),
        upstream_duration: meter
            .f64_histogram("iapd.upstream.duration")
            .with_unit("s")
            .with_description("HTTP requests the host sent for plugins")
            .build(),
        upstream_retries: meter.u64_counter("iapd.upstream.retries").build(),
        upstream_retry_wait: meter.f64_histogram("iapd.upstream.retry_wait").with_unit("s").build(),
        rate_limit_wait: meter.f64_histogram("iapd.upstream.rate_limit_wait").with_unit("s").build(),
        rate_limited: meter.u64_counter("iapd.upstream.rate_limited").build(),
        ledger_batch_size: meter.u64_histogram("iapd.ledger.batch.size").build(),
        ledger_batch_duration: meter.f64_histogram("iapd.ledger.batch.duration").with_unit("s").build(),
    }
});

/// Records one answered RPC.
pub(crate) fn rpc_answered(
    method: &'static str,
    store: &str,
    verdict: &'static str,
    code: tonic::Code,
    took: Duration,
) {
    let labels = [
        KeyValue::new("rpc.method", method),
        KeyValue::new("store", store.to_owned()),
        KeyValue::new("rpc.grpc.status_code", code_name(code)),
        KeyValue::new("verdict", verdict),
    ];
    METRICS.rpc_duration.record(took.as_secs_f64(), &labels[..3]);
    METRICS.rpcs.add(1, &labels);
}

/// A code's name as a static string, so a metric label costs no allocation.
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "Ok",
        Code::Cancelled => "Cancelled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_log_filter_reads_back_from_its_text() {
        // The export's filter is built from the log filter's text.
        let filter = tracing_subscriber::EnvFilter::new("warn,iapd::ledger=debug,h2=off");
        let text = filter.to_string();
        let again = tracing_subscriber::EnvFilter::builder().parse(format!("{text},iapd=debug")).expect("parses");
        for directive in ["warn", "iapd::ledger=debug", "h2=off", "iapd=debug"] {
            assert!(again.to_string().split(',').any(|found| found == directive), "{directive} in {again}");
        }
    }
}
