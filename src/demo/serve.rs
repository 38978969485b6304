//! The serving side of the demo: the quota API, the web page at `/` and
//! `/metrics` on `--listen`, the demo's models behind the token gateway,
//! and the seeded tenants calling them, until Ctrl-C, SIGTERM or the end
//! of the run.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use super::{callers, model, setup, state, DemoArgs};
use crate::api::gateway::Gateway;
use crate::api::{ApiConfig, ApiState};
use crate::error::InputError;
use crate::ledger::Ledger;
use crate::sim::backend::WorldBackend;

/// What the demo serves while its world runs.
pub(super) struct Serving {
    runtime: tokio::runtime::Runtime,
    /// Set by Ctrl-C or SIGTERM, and at the end of the run.
    pub(super) stop: Arc<AtomicBool>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    gateway: Arc<Gateway>,
    /// The callers' keys (tenant, hash), revoked at the end.
    caller_keys: Vec<(String, String)>,
}

impl Serving {
    /// Starts serving `backend`'s world and `ledger` on `--listen`, with the
    /// series of `registry` on `/metrics`.
    pub(super) fn start(
        args: &DemoArgs,
        ledger: &Ledger,
        backend: &WorldBackend,
        registry: &prometheus::Registry,
        key_dir: &Path,
    ) -> anyhow::Result<Serving> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let stop = Arc::new(AtomicBool::new(false));
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(args.listen))
            .map_err(|e| InputError::new(format!("--listen {}: {e}", args.listen)))?;
        // The demo's models behind the token gateway (see `model`).
        let model_addr = runtime
            .block_on(model::start(model::Upstream {
                usage_in_stream: true,
                word_delay: Duration::from_millis(5),
                seen: Arc::default(),
            }))
            .context("starting the demo's model server")?;
        let config = api_config(
            model_addr,
            &state::admin_key(args.admin_key_file.as_deref(), key_dir)?,
        );
        // The quota API, the page at `/` and `/metrics` (the world's, the ledger's,
        // the agents' and the API's own series, one registry).
        let state = ApiState::new(config, ledger.clone(), Arc::new(backend.clone()), registry)?;
        let gateway = state.gateway().clone();
        {
            let _in_runtime = runtime.enter();
            crate::api::gateway::health::spawn(&gateway);
        }
        let server = serve_until(&runtime, listener, crate::api::router(state), &stop);
        stop_on_signal(&runtime, &stop);
        let caller_keys = start_callers(args, &runtime, ledger, &stop)?;
        eprintln!(
            "demo: serving the API, the web page and /metrics on http://{} ({}× speed{})",
            args.listen,
            args.speed,
            args.duration
                .map_or(", Ctrl-C to stop".to_string(), |d| format!(", for {d} s"))
        );
        Ok(Serving {
            runtime,
            stop,
            server,
            gateway,
            caller_keys,
        })
    }

    /// Stops serving: the server drains, the gateway writes what it metered,
    /// and the callers' keys are revoked.
    pub(super) fn shut_down(self, ledger: &Ledger) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.runtime.block_on(self.server);
        self.runtime.block_on(self.gateway.flush());
        // The callers' keys lived for this run only.
        for (tenant, hash) in &self.caller_keys {
            let _ = ledger.revoke_api_key(setup::ACTOR, tenant, &hash[..crate::ledger::KEY_ID_LEN]);
        }
    }
}

/// The API's configuration: the demo's models behind the gateway, and the
/// tenants' series public (one local user, all data simulated: the page at
/// `/` shows every tenant's series without signing in).
fn api_config(model_addr: std::net::SocketAddr, admin_key: &str) -> ApiConfig {
    ApiConfig {
        gateway: crate::api::gateway::GatewayConfig {
            upstreams: callers::MODELS
                .iter()
                .map(|(name, _)| format!("{name}=http://{model_addr}"))
                .collect(),
            tiers: callers::MODELS
                .iter()
                .map(|(name, tier)| format!("{name}={tier}"))
                .collect(),
            ..Default::default()
        },
        metrics: crate::api::metrics_access::MetricsAccess {
            tenant_series: crate::api::metrics_access::TenantSeries::Public,
            scrape_key: None,
        },
        ..ApiConfig::with_admin_key(admin_key)
    }
}

/// Serves `app` on `listener` until `stop` is set.
fn serve_until(
    runtime: &tokio::runtime::Runtime,
    listener: tokio::net::TcpListener,
    app: axum::Router,
    stop: &Arc<AtomicBool>,
) -> tokio::task::JoinHandle<std::io::Result<()>> {
    let stop = Arc::clone(stop);
    runtime.spawn(async move {
        // Client addresses for the failed-key lockout.
        let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                while !stop.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
            .await
    })
}

/// Ctrl-C or SIGTERM sets `stop`: the run finishes its step, writes the
/// summary and cleans up.
fn stop_on_signal(runtime: &tokio::runtime::Runtime, stop: &Arc<AtomicBool>) {
    let stop = Arc::clone(stop);
    runtime.spawn(async move {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let terminated = async {
            match term.as_mut() {
                Some(t) => t.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminated => {}
        }
        stop.store(true, Ordering::Relaxed);
    });
}

/// The seeded tenants' calls to the demo's models at `--model-calls-per-s`,
/// each with a key made for this run; returns the keys (tenant, hash).
fn start_callers(
    args: &DemoArgs,
    runtime: &tokio::runtime::Runtime,
    ledger: &Ledger,
    stop: &Arc<AtomicBool>,
) -> anyhow::Result<Vec<(String, String)>> {
    let mut callers = Vec::new();
    if args.model_calls_per_s > 0.0 {
        for t in setup::TENANTS {
            callers.push(callers::Caller {
                tenant: t.name.to_string(),
                key: ledger.create_api_key(setup::ACTOR, t.name)?,
                tier: t.tier,
            });
        }
    }
    let caller_keys = callers
        .iter()
        .map(|c| (c.tenant.clone(), crate::ledger::hash_api_key(&c.key)))
        .collect();
    callers::spawn(
        runtime,
        format!("http://{}", args.listen),
        callers,
        args.model_calls_per_s,
        args.seed,
        Arc::clone(stop),
    );
    Ok(caller_keys)
}
