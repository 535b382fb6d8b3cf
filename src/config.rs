//! `ferry serve` configuration: defaults, then the TOML file, then flags and environment.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use ferry_core::autoscale::ScalingConfig;
use ferry_core::model::ModelSpec;
use ferry_functions::auth::{AuthConfig, JwtConfig};
use ferry_functions::server::ConnectionLimits;
use ferry_functions::upstream::UpstreamConfig;
use ferry_functions::{BodyRate, MoneyConfig, RouterConfig};
use ferry_scaler::DeploymentConfig;
use serde::Deserialize;

/// The config file (`--config`, or `ferry.toml` in the data directory). Every section and
/// field is optional; unknown keys are errors so a typo never passes silently.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub server: ServerSection,
    #[serde(default)]
    pub auth: AuthSection,
    #[serde(default)]
    pub upstream: UpstreamSection,
    #[serde(default)]
    pub pool: PoolSection,
    /// Models registered (created or replaced) at every start.
    #[serde(default)]
    pub models: Vec<ModelSpec>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    /// Where to listen; `--addr` / `FERRY_ADDR` win over it.
    pub addr: Option<SocketAddr>,
    /// Larger request bodies get 413. Default 8 MiB.
    pub max_request_body_bytes: Option<usize>,
    /// How long tenants (limits, budgets), models and price schedules are trusted before they
    /// are read again; bounds how late another replica's change takes effect here. Default 5.
    pub read_cache_ttl_seconds: Option<u64>,
    /// Model calls served at once before more get 503 `overloaded`. Default 4096.
    pub max_calls_in_flight: Option<usize>,
    /// A stream whose caller takes nothing for this long is ended (settled for what it
    /// delivered). Default 60.
    pub stream_write_timeout_seconds: Option<u64>,
    /// Client connections open at once; past it a new one gets 503 and is closed at once.
    /// Default 10000 (keep it under the process's descriptor limit, `ulimit -n`).
    pub max_connections: Option<usize>,
    /// From the first byte of a request head to its last. Default 10.
    pub header_read_timeout_seconds: Option<u64>,
    /// How long a connection with no call in flight waits for its next request; keep it above
    /// the keep-alive of any proxy in front. Default 75.
    pub idle_timeout_seconds: Option<u64>,
    /// The longest pause in a request body (and the time before its rate is judged). Default 10.
    pub body_read_timeout_seconds: Option<u64>,
    /// The average rate a request body must keep up once that time has passed. Default 1024.
    pub min_body_bytes_per_second: Option<u64>,
    /// An HTTP/1 request head or HTTP/2 header list larger than this is refused. Default 65536.
    pub max_header_bytes: Option<u32>,
    /// HTTP/2 streams one connection may have open at once. Default 256.
    pub http2_max_concurrent_streams: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSection {
    /// How long a looked-up API key is trusted before it is read again. Default 5.
    pub key_cache_ttl_seconds: Option<u64>,
    /// How stale the filter of live key ids may be before an unknown key makes this replica
    /// check the store for new keys: a key created elsewhere works here within it. Default
    /// 1000.
    pub key_set_recheck_ms: Option<u64>,
    /// OIDC: accept JWTs from this identity provider.
    pub jwt: Option<JwtConfig>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSection {
    pub connect_timeout_seconds: Option<u64>,
    pub request_timeout_seconds: Option<u64>,
    pub stream_idle_timeout_seconds: Option<u64>,
}

/// The local GPU pool that serves `ferry serve`'s own models: worker processes started on
/// demand, scaled by load, and stopped when idle.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolSection {
    /// Replicas kept even when idle. Default 0: the first call after an idle spell waits for
    /// a worker to load.
    pub min_replicas: Option<u32>,
    /// Default 1: on one machine, more workers share the same cores or GPU.
    pub max_replicas: Option<u32>,
    /// `ferry` (LLM-aware: queue and KV-cache saturation) or `kpa` (Knative's). Default ferry.
    pub policy: Option<PolicyName>,
    /// Calls sent to one replica at once; more wait in the activator. Default: the batch size.
    pub replica_concurrency: Option<u32>,
    /// Calls that may wait for a replica before more get 503. Default 256.
    pub max_queue: Option<usize>,
    /// How long a call may wait for a replica (a cold start included). Default 120.
    pub queue_deadline_seconds: Option<f64>,
    /// The window the policy averages the load over to scale in. Default 60.
    pub stable_window_seconds: Option<f64>,
    /// How long the last replica stays once the deployment is idle. Default 30.
    pub scale_to_zero_grace_seconds: Option<f64>,
    /// How often the autoscaler looks. Default 0.5.
    pub tick_seconds: Option<f64>,
    /// How long a replica may take to start and answer `/readyz`. Default 600.
    pub start_timeout_seconds: Option<f64>,
    /// Where the pool's activator listens (`GET /pool`, `POST /pool/local/prewarm`). Default
    /// a free loopback port.
    pub activator_addr: Option<SocketAddr>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum PolicyName {
    Ferry,
    Kpa,
}

/// The validated configuration `serve` runs with.
#[derive(Debug)]
pub struct Config {
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    pub max_request_body_bytes: usize,
    pub read_cache_ttl: Duration,
    pub max_calls_in_flight: usize,
    pub stream_write_timeout: Duration,
    pub connections: ConnectionLimits,
    pub auth: AuthConfig,
    pub upstream: UpstreamConfig,
    pub models: Vec<ModelSpec>,
    pub pool: PoolSection,
}

pub struct Overrides {
    pub addr: Option<SocketAddr>,
    pub data_dir: PathBuf,
    pub config_file: Option<PathBuf>,
}

const DEFAULT_ADDR: &str = "127.0.0.1:8080";

pub fn load(overrides: Overrides) -> anyhow::Result<Config> {
    let default_file = overrides.data_dir.join("ferry.toml");
    let file = match &overrides.config_file {
        Some(path) => read(path)?,
        None if default_file.exists() => read(&default_file)?,
        None => FileConfig::default(),
    };
    for model in &file.models {
        model.validate().map_err(|error| {
            anyhow::anyhow!(
                "config: models `{}`: {}: {}",
                model.id,
                error.param.unwrap_or_default(),
                error.message
            )
        })?;
    }
    let upstream_defaults = UpstreamConfig::default();
    let seconds =
        |value: Option<u64>, default: Duration| value.map_or(default, Duration::from_secs);
    Ok(Config {
        addr: match overrides.addr.or(file.server.addr) {
            Some(addr) => addr,
            None => DEFAULT_ADDR.parse()?,
        },
        data_dir: overrides.data_dir,
        max_request_body_bytes: file
            .server
            .max_request_body_bytes
            .unwrap_or(8 * 1024 * 1024),
        read_cache_ttl: Duration::from_secs(file.server.read_cache_ttl_seconds.unwrap_or(5)),
        max_calls_in_flight: file
            .server
            .max_calls_in_flight
            .unwrap_or(RouterConfig::default().max_calls_in_flight),
        stream_write_timeout: file
            .server
            .stream_write_timeout_seconds
            .map_or(MoneyConfig::default().stream_write_timeout, |seconds| {
                Duration::from_secs(seconds.max(1))
            }),
        connections: connection_limits(&file.server),
        auth: AuthConfig {
            key_cache_ttl: Duration::from_secs(file.auth.key_cache_ttl_seconds.unwrap_or(5)),
            key_set_recheck: file
                .auth
                .key_set_recheck_ms
                .map_or(AuthConfig::default().key_set_recheck, Duration::from_millis),
            jwt: file.auth.jwt,
            ..AuthConfig::default()
        },
        upstream: UpstreamConfig {
            connect_timeout: seconds(
                file.upstream.connect_timeout_seconds,
                upstream_defaults.connect_timeout,
            ),
            request_timeout: seconds(
                file.upstream.request_timeout_seconds,
                upstream_defaults.request_timeout,
            ),
            stream_idle_timeout: seconds(
                file.upstream.stream_idle_timeout_seconds,
                upstream_defaults.stream_idle_timeout,
            ),
        },
        models: file.models,
        pool: validate_pool(file.pool)?,
    })
}

fn connection_limits(server: &ServerSection) -> ConnectionLimits {
    let defaults = ConnectionLimits::default();
    let seconds = |value: Option<u64>, default: Duration| {
        value.map_or(default, |seconds| Duration::from_secs(seconds.max(1)))
    };
    ConnectionLimits {
        max_connections: server
            .max_connections
            .unwrap_or(defaults.max_connections)
            .max(1),
        header_read_timeout: seconds(
            server.header_read_timeout_seconds,
            defaults.header_read_timeout,
        ),
        idle_timeout: seconds(server.idle_timeout_seconds, defaults.idle_timeout),
        body_rate: BodyRate {
            grace: seconds(server.body_read_timeout_seconds, defaults.body_rate.grace),
            min_bytes_per_second: server
                .min_body_bytes_per_second
                .unwrap_or(defaults.body_rate.min_bytes_per_second),
        },
        max_header_bytes: server
            .max_header_bytes
            .unwrap_or(defaults.max_header_bytes)
            .max(8192),
        http2_max_concurrent_streams: server
            .http2_max_concurrent_streams
            .unwrap_or(defaults.http2_max_concurrent_streams)
            .max(1),
    }
}

impl PoolSection {
    /// The deployment these knobs describe; `default_concurrency` is the worker's batch.
    pub fn deployment(&self, name: &str, default_concurrency: usize) -> DeploymentConfig {
        let millis = |seconds: f64| (seconds * 1000.0).round() as u64;
        let concurrency = self
            .replica_concurrency
            .unwrap_or_else(|| u32::try_from(default_concurrency).unwrap_or(u32::MAX))
            .max(1);
        let max_replicas = self.max_replicas.unwrap_or(1);
        let mut scaling = match self.policy.unwrap_or(PolicyName::Ferry) {
            PolicyName::Ferry => ScalingConfig::llm_aware(f64::from(concurrency), max_replicas),
            PolicyName::Kpa => ScalingConfig::kpa(f64::from(concurrency), max_replicas),
        };
        scaling.min_replicas = self.min_replicas.unwrap_or(0);
        if let Some(seconds) = self.stable_window_seconds {
            scaling.stable_window_ms = millis(seconds);
        }
        if let Some(seconds) = self.scale_to_zero_grace_seconds {
            scaling.scale_to_zero_grace_ms = millis(seconds);
        }
        DeploymentConfig {
            name: name.to_owned(),
            scaling,
            replica_concurrency: concurrency,
            max_queue: self.max_queue.unwrap_or(256),
            queue_deadline: Duration::from_secs_f64(self.queue_deadline_seconds.unwrap_or(120.0)),
            tick: Duration::from_secs_f64(self.tick_seconds.unwrap_or(0.5)),
            start_timeout: Duration::from_secs_f64(self.start_timeout_seconds.unwrap_or(600.0)),
        }
    }
}

pub fn validate_pool(pool: PoolSection) -> anyhow::Result<PoolSection> {
    for (name, value) in [
        ("queue_deadline_seconds", pool.queue_deadline_seconds),
        ("stable_window_seconds", pool.stable_window_seconds),
        (
            "scale_to_zero_grace_seconds",
            pool.scale_to_zero_grace_seconds,
        ),
        ("tick_seconds", pool.tick_seconds),
        ("start_timeout_seconds", pool.start_timeout_seconds),
    ] {
        if let Some(value) = value
            && !(value.is_finite() && (0.0..=86_400.0).contains(&value))
        {
            anyhow::bail!("config: pool.{name} must be between 0 and 86400 seconds");
        }
    }
    if pool.tick_seconds == Some(0.0) || pool.start_timeout_seconds == Some(0.0) {
        anyhow::bail!("config: pool.tick_seconds and pool.start_timeout_seconds must be above 0");
    }
    if pool.max_queue == Some(0) {
        // A call at zero replicas waits in the queue while one starts: no queue, no start.
        anyhow::bail!("config: pool.max_queue must be at least 1");
    }
    let (min, max) = (
        pool.min_replicas.unwrap_or(0),
        pool.max_replicas.unwrap_or(1),
    );
    if max == 0 || min > max {
        anyhow::bail!("config: pool needs 1 <= max_replicas and min_replicas <= max_replicas");
    }
    Ok(pool)
}

fn read(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("config {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<FileConfig, toml::de::Error> {
        toml::from_str(text)
    }

    #[test]
    fn reads_a_full_config() {
        let config = parse(
            r#"
            [server]
            addr = "0.0.0.0:9000"
            max_request_body_bytes = 1024
            read_cache_ttl_seconds = 0
            max_calls_in_flight = 64
            [auth]
            key_cache_ttl_seconds = 1
            [auth.jwt]
            jwks_url = "http://127.0.0.1:1/jwks"
            issuer = "https://idp"
            audience = "ferry"
            role_map = { admins = "tenant-admin" }
            [pool]
            min_replicas = 0
            max_replicas = 2
            policy = "kpa"
            scale_to_zero_grace_seconds = 1.5
            [[models]]
            id = "small"
            deployments = [{ id = "a", upstream = { url = "http://127.0.0.1:8000/v1", model = "m" } }]
            price = { input_per_mtok_usd = "0.10", output_per_mtok_usd = "0.40" }
            "#,
        )
        .unwrap();
        assert_eq!(config.server.max_request_body_bytes, Some(1024));
        assert_eq!(config.models[0].deployments[0].weight, 1);
        assert_eq!(config.auth.jwt.unwrap().role_map.len(), 1);
    }

    #[test]
    fn typos_are_errors() {
        let error = parse("[server]\nadress = \"x\"").unwrap_err().to_string();
        assert!(error.contains("adress"), "{error}");
        assert!(
            parse("[auth.jwt]\njwks_url = \"x\"").is_err(),
            "missing issuer and audience"
        );
    }
}
