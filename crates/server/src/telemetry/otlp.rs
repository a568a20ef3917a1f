//! `[telemetry]`: OpenTelemetry traces exported over OTLP/HTTP (protobuf,
//! batched off the request path). Off unless `otlp_endpoint` is set; the
//! gateway then makes a span of every request it proxies.

use std::collections::BTreeMap;
use std::time::Duration;

use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use serde::Deserialize;

use crate::config::{de, Validate, Validator};

/// `[telemetry]`: where traces go.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// OTLP/HTTP collector base URL, e.g. `http://127.0.0.1:4318`; traces
    /// are posted to `<base>/v1/traces` (a URL already ending in
    /// `/v1/traces` is used as is). Unset: no tracing at all.
    pub otlp_endpoint: Option<String>,
    /// Extra headers on every export request, e.g. a collector API key.
    pub otlp_headers: BTreeMap<String, String>,
    /// `service.name` of the exported resource.
    pub service_name: String,
    /// Share of new traces recorded (0.0–1.0). A request that arrives with a
    /// `traceparent` follows its caller's sampling decision instead.
    pub sample_ratio: f64,
    /// How long one export may take before it is abandoned.
    #[serde(deserialize_with = "de::duration")]
    pub export_timeout: Duration,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            otlp_endpoint: None,
            otlp_headers: BTreeMap::new(),
            service_name: "trellis".to_owned(),
            sample_ratio: 1.0,
            export_timeout: Duration::from_secs(10),
        }
    }
}

impl Validate for TelemetryConfig {
    fn validate(&self, v: &mut Validator) {
        if let Some(url) = &self.otlp_endpoint {
            if let Err(e) = traces_url(url) {
                v.invalid("otlp_endpoint", e);
            }
        }
        for (name, value) in &self.otlp_headers {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                v.invalid(&format!("otlp_headers.{name}"), "invalid header name");
            } else if http::HeaderValue::from_str(value).is_err() {
                v.invalid(&format!("otlp_headers.{name}"), "invalid header value");
            }
        }
        if self.service_name.trim().is_empty() {
            v.invalid("service_name", "must not be empty");
        }
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            v.invalid("sample_ratio", "must be between 0.0 and 1.0");
        }
        if self.export_timeout.is_zero() {
            v.invalid("export_timeout", "must be greater than zero");
        }
    }
}

/// The traces URL for a configured endpoint.
fn traces_url(endpoint: &str) -> Result<String, String> {
    let uri: http::Uri = endpoint
        .parse()
        .map_err(|_| format!("{endpoint:?} is not a URL such as \"http://127.0.0.1:4318\""))?;
    match uri.scheme_str() {
        Some("http" | "https") if uri.authority().is_some() => {}
        _ => {
            return Err(format!(
                "{endpoint:?}: write an http:// or https:// URL such as \"http://127.0.0.1:4318\""
            ))
        }
    }
    if uri.query().is_some() {
        return Err(format!("{endpoint:?}: no query string"));
    }
    let trimmed = endpoint.trim_end_matches('/');
    Ok(if trimmed.ends_with("/v1/traces") {
        trimmed.to_owned()
    } else {
        format!("{trimmed}/v1/traces")
    })
}

/// The tracer provider `[telemetry]` asks for, or `None` when tracing is
/// off. Spans are exported in batches from the SDK's own thread.
pub fn tracer_provider(config: &TelemetryConfig) -> anyhow::Result<Option<SdkTracerProvider>> {
    let Some(endpoint) = &config.otlp_endpoint else {
        return Ok(None);
    };
    let url = traces_url(endpoint).map_err(|e| anyhow::anyhow!("telemetry.otlp_endpoint: {e}"))?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_endpoint(url.clone())
        .with_timeout(config.export_timeout)
        .with_headers(config.otlp_headers.clone().into_iter().collect())
        .build()
        .map_err(|e| anyhow::anyhow!("cannot build the OTLP exporter: {e}"))?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(config.service_name.clone())
        .build();
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            config.sample_ratio,
        ))))
        .with_resource(resource)
        .build();
    tracing::info!(endpoint = %url, "exporting traces over OTLP/HTTP");
    Ok(Some(provider))
}

#[cfg(test)]
mod tests {
    use super::traces_url;

    #[test]
    fn endpoints_become_traces_urls() {
        assert_eq!(
            traces_url("http://127.0.0.1:4318").unwrap(),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(
            traces_url("https://otel.example.com/v1/traces/").unwrap(),
            "https://otel.example.com/v1/traces"
        );
        for bad in ["127.0.0.1:4318", "grpc://x:4317", "http://", "http://x?y=1"] {
            assert!(traces_url(bad).is_err(), "{bad}");
        }
    }
}
