//! `zhisuan crd` and `zhisuan controller`.

use std::path::PathBuf;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use super::controller::{Controller, ControllerConfig};
use super::crd;
use super::leader::{Leadership, LeaseTiming};
use super::metering::MeterConfig;
use crate::error::InputError;
use crate::placement::Policy;
use crate::regions::catalog::ScoreWeights;
use crate::schedule::PlanConfig;
use crate::telemetry::tokens::TokenScrapeConfig;

/// Arguments of `zhisuan crd`.
#[derive(clap::Args, Debug)]
pub struct CrdArgs {
    /// Write one file per CRD into this directory instead of printing a YAML stream.
    #[arg(long)]
    pub out_dir: Option<PathBuf>,
}

/// Arguments of `zhisuan controller`.
#[derive(clap::Args, Debug)]
pub struct ControllerArgs {
    /// Address of `/metrics`, `/healthz` and `/readyz`.
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub listen: String,
    /// This replica's identity in the leader Lease (the pod name in a cluster).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// The controller's own namespace: the leader Lease's, and the only one
    /// member-cluster kubeconfig Secrets are read in.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,
    /// Name of the leader Lease.
    #[arg(long, default_value = "zhisuan-controller")]
    pub lease_name: String,
    /// Seconds a Lease stays valid without renewal.
    #[arg(long, default_value_t = 15)]
    pub lease_duration_s: u64,
    /// Placement policy (zhisuan, fgd, bestfit, dotprod, gpupacking, gpuclustering, random).
    #[arg(long, default_value = "zhisuan")]
    pub policy: String,
    /// How replica pods ask for their devices: `zhisuan` (the zhisuan agent's
    /// device plugin gives each container exactly its placed devices) or
    /// `vendor` (the template's own `nvidia.com/gpu` requests; the vendor's
    /// plugin picks the devices, so the placement is not enforced).
    #[arg(long, value_enum, default_value = "zhisuan")]
    pub device_resources: crate::operator::pods::DeviceResources,
    /// `required`: a workload runs only in a namespace labelled
    /// `zhisuan.io/tenant=<its spec.tenant>` (or `zhisuan.io/multi-tenant=true`,
    /// the API's); `optional`: unlabelled namespaces take any tenant
    /// (single-team clusters and trials only).
    #[arg(long, value_enum, default_value = "required")]
    pub tenant_namespaces: crate::operator::tenancy::NamespaceTenancy,
    /// ComputeRegions whose score is within this fraction of the best one
    /// count as equally good for a job, which then goes where it packs best
    /// (docs/regions.md, "Packing band"); 0 = strict score order.
    #[arg(long, default_value_t = 0.3)]
    pub pack_band: f64,
    /// Seconds between passes when nothing changes.
    #[arg(long, default_value_t = 5)]
    pub resync_s: u64,
    /// Ledger with the month-to-date use that TenantQuotas' monthly limits
    /// (`gpuHoursPerMonth`, `tokensPerMonth`) are checked against: a SQLite
    /// path or a postgres:// URL. Without it those limits are not enforced.
    /// Also where InferenceServices' tokens are counted: every running
    /// pod of a service with `spec.metrics` is scraped (vLLM counters).
    #[arg(long, env = "ZHISUAN_LEDGER_DB")]
    pub ledger: Option<String>,
    /// File holding the ledger's location (one line; e.g. a mounted Secret
    /// with the postgres:// URL); instead of --ledger.
    #[arg(long, value_name = "PATH", conflicts_with = "ledger")]
    pub ledger_file: Option<std::path::PathBuf>,
    /// Length of a GPU metering window in seconds (with --ledger; must divide
    /// a day). Every pod the controller placed is metered into the ledger per
    /// window while this replica leads.
    #[arg(long, default_value_t = 60)]
    pub meter_period_s: u64,
    /// Seconds between syncs of ComputeVouchers with the ledger (with
    /// --ledger): each is issued once, its status shows the balance.
    #[arg(long, default_value_t = 15)]
    pub voucher_sync_s: u64,
    /// Seconds between token scrapes (with --ledger); windows align to it.
    #[arg(long, default_value_t = 15)]
    pub token_scrape_s: u64,
    /// Name of the cumulative prompt-token counter on InferenceService
    /// metrics endpoints (e.g. `sglang:prompt_tokens_total`).
    #[arg(long, default_value = "vllm:prompt_tokens_total")]
    pub prompt_token_counter: String,
    /// Name of the cumulative completion-token counter.
    #[arg(long, default_value = "vllm:generation_tokens_total")]
    pub completion_token_counter: String,
}

pub fn run_crd(args: CrdArgs) -> anyhow::Result<()> {
    match args.out_dir {
        None => print!("{}", crd::crds_yaml()?),
        Some(dir) => {
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("creating --out-dir {}", dir.display()))?;
            for (name, text) in crd::crd_files()? {
                let path = dir.join(name);
                std::fs::write(&path, text)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
        }
    }
    Ok(())
}

pub fn run_controller(mut args: ControllerArgs) -> anyhow::Result<()> {
    if let Some(path) = &args.ledger_file {
        args.ledger = Some(crate::ledger::cli::read_location_file(
            "--ledger-file",
            path,
        )?);
    }
    let config = controller_config(&args)?;
    let listen: std::net::SocketAddr = args.listen.parse().map_err(|e| {
        InputError::new(format!(
            "--listen {:?} is not host:port ({e}); e.g. 0.0.0.0:8080",
            args.listen
        ))
    })?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        crate::logs::init("error");
        let client = kube::Client::try_default()
            .await
            .context("connecting to the Kubernetes API (set KUBECONFIG or run in a cluster)")?;
        let registry = prometheus::Registry::new();
        let mut controller = Controller::new(client, config, &registry)?;
        if let Some(url) = &args.ledger {
            let ledger = crate::ledger::Ledger::open(url).map_err(|e| {
                let url = crate::ledger::cli::redact_url(url);
                InputError::new(format!("--ledger {url:?}: {e}"))
            })?;
            let scrape = TokenScrapeConfig {
                interval: Duration::from_secs(args.token_scrape_s.max(1)),
                names: crate::ledger::TokenCounterNames {
                    prompt: args.prompt_token_counter.clone(),
                    completion: args.completion_token_counter.clone(),
                },
                ..TokenScrapeConfig::default()
            };
            // Real usage is never billed beside a simulated cluster's.
            if ledger.simulated().map_err(|e| e.into_anyhow())? {
                return Err(InputError::new(format!(
                    "--ledger {:?}: a simulated cluster (zhisuan api --backend world or the demo) bills into this ledger; give the controller a ledger of its own",
                    crate::ledger::cli::redact_url(url)
                ))
                .into());
            }
            // A fresh ledger gets the documented default rate card, so no
            // metered usage ever lacks a price (docs/ledger.md).
            ledger
                .ensure_rate_card("controller")
                .map_err(|e| e.into_anyhow())?;
            let meter = meter_config(args.meter_period_s)?;
            controller = controller
                .with_token_counting(ledger.clone(), scrape)
                .with_gpu_metering(ledger.clone(), meter, &registry)?
                .with_vouchers(
                    ledger.clone(),
                    std::time::Duration::from_secs(args.voucher_sync_s.max(1)),
                )
                .with_usage(std::sync::Arc::new(ledger));
        }
        let ready = controller.ready_flag();
        let leadership = controller.leadership();
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding --listen {listen}"))?;
        let app = health_router(registry, ready, leadership);
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        tokio::spawn(async move {
            let _ = tokio::signal::ctrl_c().await;
            let _ = stop_tx.send(true);
        });
        controller.run(stop_rx).await
    })
}

/// The GPU meter's settings from `--meter-period-s`.
fn meter_config(period_s: u64) -> anyhow::Result<MeterConfig> {
    if crate::ledger::windows::check_period(i64::try_from(period_s).unwrap_or(0)).is_err() {
        return Err(InputError::new(format!(
            "--meter-period-s {period_s}: must divide a day (e.g. 60, 300, 3600) so every replica meters the same windows"
        ))
        .into());
    }
    Ok(MeterConfig {
        period: Duration::from_secs(period_s),
        grace: Duration::from_secs((period_s / 2).clamp(1, 10)),
        ..MeterConfig::default()
    })
}

fn controller_config(args: &ControllerArgs) -> anyhow::Result<ControllerConfig> {
    let policy: Policy = args
        .policy
        .parse()
        .map_err(|e| InputError::new(format!("--policy {:?}: {e}", args.policy)))?;
    if !(args.pack_band.is_finite() && args.pack_band >= 0.0) {
        return Err(InputError::new(format!(
            "--pack-band {}: must be a number ≥ 0 (a fraction of the best region score, e.g. 0.3; 0 = strict score order)",
            args.pack_band
        ))
        .into());
    }
    if args.lease_duration_s < 3 {
        return Err(InputError::new("--lease-duration-s must be 3 or more seconds").into());
    }
    let lease = Duration::from_secs(args.lease_duration_s);
    let identity = args.identity.clone().unwrap_or_else(|| {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "zhisuan".into());
        format!("{host}-{}", std::process::id())
    });
    Ok(ControllerConfig {
        identity,
        lease_namespace: args.lease_namespace.clone(),
        lease_name: args.lease_name.clone(),
        timing: LeaseTiming {
            lease_duration: lease,
            renew_deadline: lease * 2 / 3,
            retry_period: lease / 5,
        },
        plan: PlanConfig {
            policy,
            region_scoring: ScoreWeights {
                pack_band: args.pack_band,
                ..ScoreWeights::default()
            },
            ..PlanConfig::default()
        },
        resync: Duration::from_secs(args.resync_s.max(1)),
        device_resources: args.device_resources,
        namespace_tenancy: args.tenant_namespaces,
        ..ControllerConfig::default()
    })
}

/// `/metrics` (the given registry), `/healthz` (alive), `/readyz` (caches synced).
pub fn health_router(
    registry: prometheus::Registry,
    ready: Arc<AtomicBool>,
    leadership: Leadership,
) -> axum::Router {
    use axum::http::StatusCode;
    use axum::routing::get;
    axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let registry = registry.clone();
                async move {
                    let mut buf = String::new();
                    let enc = prometheus::TextEncoder::new();
                    match enc.encode_utf8(&registry.gather(), &mut buf) {
                        Ok(()) => (StatusCode::OK, buf),
                        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
                    }
                }
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let ready = ready.load(Ordering::SeqCst);
                let leader = leadership.is_leader();
                async move {
                    let role = if leader { "leader" } else { "standby" };
                    if ready {
                        (StatusCode::OK, format!("ready ({role})"))
                    } else {
                        (
                            StatusCode::SERVICE_UNAVAILABLE,
                            "caches not synced".to_string(),
                        )
                    }
                }
            }),
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ControllerArgs,
    }

    fn config(flags: &[&str]) -> anyhow::Result<ControllerConfig> {
        let cli = Cli::try_parse_from(std::iter::once("controller").chain(flags.iter().copied()))?;
        controller_config(&cli.args)
    }

    #[test]
    fn meter_periods_must_divide_a_day() {
        assert_eq!(meter_config(60).unwrap().period, Duration::from_secs(60));
        for bad in [0, 7, 100_000] {
            let e = meter_config(bad).unwrap_err().to_string();
            assert!(
                e.contains("--meter-period-s") && e.contains("divide a day"),
                "{e}"
            );
        }
    }

    #[test]
    fn pack_band_reaches_region_choice_and_bad_values_name_the_flag() {
        let c = config(&["--pack-band", "0.5"]).unwrap();
        assert_eq!(c.plan.region_scoring.pack_band, 0.5);
        assert_eq!(c.plan.region_scoring.carbon, ScoreWeights::default().carbon);
        assert_eq!(
            config(&[]).unwrap().plan.region_scoring,
            ScoreWeights::default()
        );
        for bad in ["--pack-band=-0.1", "--pack-band=NaN", "--pack-band=inf"] {
            let e = config(&[bad]).unwrap_err().to_string();
            assert!(e.contains("--pack-band") && e.contains("≥ 0"), "{bad}: {e}");
        }
    }
}
