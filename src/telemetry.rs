//! Logs (text or JSON lines on stderr) and, when an OTLP endpoint is configured, traces
//! exported over OTLP/HTTP with W3C trace context.
//!
//! Traces are off unless `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (used as is) or
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (+ `/v1/traces`) is set. `OTEL_EXPORTER_OTLP_PROTOCOL`
//! (or `…_TRACES_PROTOCOL`) picks `http/protobuf` (the default) or `http/json`;
//! `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES` and `OTEL_BSP_*` are read as the
//! OpenTelemetry SDK reads them everywhere.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Keeps the trace exporter alive; dropping it sends the spans still buffered.
#[must_use = "dropping it stops exporting traces"]
pub(crate) struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(error) = provider.shutdown()
        {
            eprintln!("traces not all exported at exit: {error}");
        }
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|value| !value.is_empty())
}

/// Where traces go, if anywhere.
fn traces_endpoint() -> Option<String> {
    env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| {
        env("OTEL_EXPORTER_OTLP_ENDPOINT")
            .map(|base| format!("{}/v1/traces", base.trim_end_matches('/')))
    })
}

fn protocol() -> Protocol {
    let named =
        env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL").or_else(|| env("OTEL_EXPORTER_OTLP_PROTOCOL"));
    match named.as_deref() {
        Some("http/json") => Protocol::HttpJson,
        None | Some("http/protobuf") => Protocol::HttpBinary,
        Some(other) => {
            eprintln!("OTLP protocol {other} is not supported here; exporting http/protobuf");
            Protocol::HttpBinary
        }
    }
}

fn tracer_provider(service: &str) -> Option<SdkTracerProvider> {
    let endpoint = traces_endpoint()?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(protocol())
        .with_endpoint(endpoint.clone())
        .build();
    let exporter = match exporter {
        Ok(exporter) => exporter,
        Err(error) => {
            eprintln!("traces off: the OTLP exporter for {endpoint} could not be made: {error}");
            return None;
        }
    };
    let mut resource = Resource::builder();
    if env("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(service.to_owned());
    }
    Some(
        SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource.build())
            .build(),
    )
}

/// Sets up logging (`FERRY_LOG` filters, default `info`) and, if configured, tracing.
/// `service` names this process in traces unless `OTEL_SERVICE_NAME` does.
pub(crate) fn init(json: bool, service: &str) -> Telemetry {
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("FERRY_LOG").unwrap_or_else(|_| "info".into());
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let logs = if json {
        logs.json().boxed()
    } else {
        logs.boxed()
    };
    let provider = tracer_provider(service);
    let traces = provider
        .as_ref()
        .map(|provider| tracing_opentelemetry::layer().with_tracer(provider.tracer("ferry")));
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    tracing_subscriber::registry()
        .with(filter)
        .with(logs)
        .with(traces)
        .init();
    Telemetry { provider }
}
