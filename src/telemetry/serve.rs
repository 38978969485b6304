//! The agent's serving loop: samples on a dedicated thread, serves
//! `/metrics`, `/healthz` and `/readyz`, optionally the kubelet device
//! plugin, and publishes the node's health and per-pod energy on its Node.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::watch;

use super::agent::Agent;
use super::deviceplugin::{register, NodeDevices, PluginState, PodSource};
use super::health::unhealthy_indices;
use super::kube_act;
use super::publish::{NodePublication, ANNOTATION_HEARTBEAT};
use super::Accelerator;
use crate::error::InputError;
use crate::ledger::{EnergyWindows, ANNOTATION_POD_ENERGY};

type PodStore = kube::runtime::reflector::Store<k8s_openapi::api::core::v1::Pod>;

/// What the serving loop needs besides the agent.
pub struct ServeOptions {
    pub listen: String,
    pub node: String,
    pub interval: Duration,
    pub heartbeat: Duration,
    /// Stop after this many samples.
    pub samples: Option<u64>,
    /// Per-pod energy per window, published on the Node for the GPU meter.
    pub energy: crate::ledger::EnergyWindows,
    /// Serve the kubelet device plugin.
    pub device_plugin: Option<DevicePluginSetup>,
}

/// Where the device plugin talks to the kubelet, and where its pods come from.
pub struct DevicePluginSetup {
    /// The kubelet's device-plugin directory.
    pub dir: PathBuf,
    /// The kubelet's pod-resources socket.
    pub pod_resources: PathBuf,
    /// The pods bound to this node; None = the agent's pod watch.
    pub pods: Option<PodSource>,
}

#[derive(Clone)]
struct AgentHttp {
    registry: Arc<prometheus::Registry>,
    readiness: Readiness,
}

/// `/readyz`: ready while the latest successful sample is recent — within
/// three sampling intervals (at least 10 s) — so a node whose devices cannot
/// be read (driver gone, exporter down) leaves the Service and shows NotReady.
#[derive(Clone)]
pub struct Readiness {
    started: Instant,
    /// Milliseconds after `started` of the last good sample, plus one (0 = none yet).
    last_ok_ms: Arc<std::sync::atomic::AtomicU64>,
    stale_after: Duration,
}

impl Readiness {
    pub fn new(interval: Duration) -> Self {
        Readiness {
            started: Instant::now(),
            last_ok_ms: Arc::new(std::sync::atomic::AtomicU64::new(0)),
            stale_after: (interval * 3).max(Duration::from_secs(10)),
        }
    }

    pub fn sampled(&self) {
        let ms = self.started.elapsed().as_millis() as u64 + 1;
        self.last_ok_ms
            .store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// `Err` says why not ready.
    pub fn check(&self) -> Result<(), String> {
        self.check_at(self.started.elapsed())
    }

    fn check_at(&self, now: Duration) -> Result<(), String> {
        let last = self.last_ok_ms.load(std::sync::atomic::Ordering::Relaxed);
        if last == 0 {
            return Err("no successful sample yet".into());
        }
        let age = now.saturating_sub(Duration::from_millis(last - 1));
        if age > self.stale_after {
            return Err(format!(
                "last successful sample {:.0} s ago (ready within {} s); see the agent's log for the sampling error",
                age.as_secs_f64(),
                self.stale_after.as_secs()
            ));
        }
        Ok(())
    }
}

/// Runs an agent until `shutdown` resolves or `opts.samples` are taken:
/// samples on a dedicated thread, serves `/metrics`, `/healthz` and `/readyz` on
/// `opts.listen` (`on_listen` gets the bound address), and, given a client,
/// watches the node's pods and patches the Node whenever the publication
/// changes or the heartbeat is due.
pub async fn serve_agent<B: Accelerator + 'static>(
    agent: Agent<B>,
    registry: prometheus::Registry,
    publish_errors: prometheus::IntCounter,
    opts: ServeOptions,
    client: Option<kube::Client>,
    shutdown: impl std::future::Future<Output = ()>,
    on_listen: impl FnOnce(std::net::SocketAddr),
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(&opts.listen)
        .await
        .map_err(|e| InputError::new(format!("--listen {}: cannot bind: {e}", opts.listen)))?;
    on_listen(listener.local_addr()?);
    let readiness = Readiness::new(opts.interval);
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let server = serve_http(listener, registry, readiness.clone(), shutdown_rx.clone());
    let pod_store = client
        .as_ref()
        .map(|c| kube_act::watch_node_pods(c, &opts.node));
    let devices = start_device_plugin(&agent, &opts, pod_store.as_ref(), &shutdown_rx);
    let energy = resumed_energy(client.as_ref(), &opts.node, opts.energy).await;
    let (publications, published) = watch::channel::<Option<NodePublication>>(None);
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let sampler = Sampler {
        agent,
        pod_store,
        energy,
        readiness,
        devices,
        publications,
    }
    .spawn(opts.interval, opts.samples, stop_rx)?;
    let publisher = client.as_ref().map(|client| Publisher {
        client,
        node: &opts.node,
        heartbeat: opts.heartbeat,
        errors: &publish_errors,
        last: None,
    });
    follow_publications(published, shutdown, publisher).await;
    let _ = stop_tx.send(());
    let _ = shutdown_tx.send(true);
    let joined = tokio::task::spawn_blocking(move || sampler.join())
        .await
        .context("join sampler thread")?;
    if joined.is_err() {
        anyhow::bail!("the sampler thread panicked (see the message above)");
    }
    server
        .await
        .context("metrics server task")?
        .context("metrics server")?;
    Ok(())
}

/// Serves `/metrics` (the series of `registry`), `/healthz` and `/readyz`
/// on `listener` until `shutdown` changes.
fn serve_http(
    listener: tokio::net::TcpListener,
    registry: prometheus::Registry,
    readiness: Readiness,
    mut shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<std::io::Result<()>> {
    let http = AgentHttp {
        registry: Arc::new(registry),
        readiness,
    };
    let app = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(
                |axum::extract::State(h): axum::extract::State<AgentHttp>| async move {
                    let body = prometheus::TextEncoder::new()
                        .encode_to_string(&h.registry.gather())
                        .unwrap_or_default();
                    ([("content-type", "text/plain; version=0.0.4")], body)
                },
            ),
        )
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .route(
            "/readyz",
            axum::routing::get(
                |axum::extract::State(h): axum::extract::State<AgentHttp>| async move {
                    match h.readiness.check() {
                        Ok(()) => (axum::http::StatusCode::OK, "ready".to_string()),
                        Err(why) => (axum::http::StatusCode::SERVICE_UNAVAILABLE, why),
                    }
                },
            ),
        )
        .with_state(http);
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = shutdown.changed().await;
            })
            .await
    })
}

/// The energy windows, with the closed windows an earlier run published on
/// the Node: they stay until the meter reads them.
async fn resumed_energy(
    client: Option<&kube::Client>,
    node: &str,
    mut energy: EnergyWindows,
) -> EnergyWindows {
    if let Some(c) = client {
        if let Some(earlier) = kube_act::published_energy(c, node).await {
            energy.resume(earlier);
        }
    }
    energy
}

/// The sampling side, on its own thread: blocking backend calls stay off
/// the runtime.
struct Sampler<B: Accelerator> {
    agent: Agent<B>,
    pod_store: Option<PodStore>,
    energy: EnergyWindows,
    readiness: Readiness,
    /// The device plugin's view of the devices, when it is served.
    devices: Option<watch::Sender<Arc<NodeDevices>>>,
    /// Each sample's publication for the Node.
    publications: watch::Sender<Option<NodePublication>>,
}

impl<B: Accelerator + 'static> Sampler<B> {
    /// Samples every `interval` until `stop` or `max_samples` are taken.
    fn spawn(
        mut self,
        interval: Duration,
        max_samples: Option<u64>,
        stop: std::sync::mpsc::Receiver<()>,
    ) -> anyhow::Result<std::thread::JoinHandle<()>> {
        std::thread::Builder::new()
            .name("sampler".into())
            .spawn(move || {
                let mut next = Instant::now();
                let mut taken = 0u64;
                loop {
                    self.sample();
                    taken += 1;
                    if max_samples.is_some_and(|m| taken >= m) {
                        return;
                    }
                    next += interval;
                    let now = Instant::now();
                    if next < now {
                        next = now; // overran: do not burst to catch up
                    }
                    match stop.recv_timeout(next - now) {
                        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                        _ => return,
                    }
                }
            })
            .context("spawn sampler thread")
    }

    /// One sample: the devices read, the pods' energy added, the Node's
    /// publication and the device plugin's health brought up to date.
    fn sample(&mut self) {
        let pods = self
            .pod_store
            .as_ref()
            .map(kube_act::pods_from_store)
            .unwrap_or_default();
        if let Err(e) = self.agent.step(&pods) {
            tracing::warn!(error = %e, "sample failed");
            return;
        }
        self.readiness.sampled();
        let now = chrono::Utc::now();
        let agent = &self.agent;
        self.energy
            .add(now.timestamp_millis(), &agent.last_window().pod_totals());
        let mut publication = agent.publication(now);
        publication.annotations.insert(
            ANNOTATION_POD_ENERGY.into(),
            serde_json::to_string(self.energy.report()).unwrap_or_default(),
        );
        self.publications.send_replace(Some(publication));
        if let Some(tx) = &self.devices {
            let unhealthy = unhealthy_indices(agent.verdicts());
            tx.send_if_modified(|d| {
                let changed = d.unhealthy != unhealthy;
                if changed {
                    Arc::make_mut(d).unhealthy = unhealthy;
                }
                changed
            });
        }
    }
}

/// Until `shutdown` or the sampler's end (`--samples`), hands each
/// publication to the Node's publisher (none without a client).
async fn follow_publications(
    mut published: watch::Receiver<Option<NodePublication>>,
    shutdown: impl std::future::Future<Output = ()>,
    mut publisher: Option<Publisher<'_>>,
) {
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            changed = published.changed() => {
                if changed.is_err() {
                    return; // sampler finished (--samples)
                }
                let Some(p) = published.borrow_and_update().clone() else { continue };
                if let Some(publisher) = publisher.as_mut() {
                    publisher.offer(p).await;
                }
            }
        }
    }
}

/// Patches the Node with the sampler's publications.
struct Publisher<'a> {
    client: &'a kube::Client,
    node: &'a str,
    heartbeat: Duration,
    errors: &'a prometheus::IntCounter,
    /// The last publication patched, and when.
    last: Option<(NodePublication, Instant)>,
}

impl Publisher<'_> {
    /// Patches the Node with `p` when it changed or the heartbeat is due.
    async fn offer(&mut self, p: NodePublication) {
        let due = match &self.last {
            None => true,
            Some((last, at)) => substance(last) != substance(&p) || at.elapsed() >= self.heartbeat,
        };
        if !due {
            return;
        }
        match kube_act::publish(self.client, self.node, &p).await {
            Ok(()) => self.last = Some((p, Instant::now())),
            Err(e) => {
                self.errors.inc();
                tracing::warn!(error = %e, "publish node status");
            }
        }
    }
}

/// The publication without its heartbeat: what must change to patch early.
fn substance(p: &NodePublication) -> NodePublication {
    let mut p = p.clone();
    p.annotations.remove(ANNOTATION_HEARTBEAT);
    p
}

/// Starts the device plugin when asked: every device starts Unhealthy (no
/// allocation before the first health verdicts); the returned sender takes
/// each sample's verdicts.
fn start_device_plugin<B: Accelerator>(
    agent: &Agent<B>,
    opts: &ServeOptions,
    pod_store: Option<&PodStore>,
    stop: &watch::Receiver<bool>,
) -> Option<watch::Sender<Arc<NodeDevices>>> {
    let setup = opts.device_plugin.as_ref()?;
    let pods = match (&setup.pods, pod_store) {
        (Some(p), _) => p.clone(),
        (None, Some(store)) => super::deviceplugin::pods::store_source(store.clone()),
        (None, None) => {
            tracing::warn!(
                "device plugin without a pod source (--no-publish): every allocation is refused"
            );
            Arc::new(Vec::new)
        }
    };
    let devices = NodeDevices {
        node: opts.node.clone(),
        vendor: agent.vendor(),
        devices: agent.inventory().to_vec(),
        unhealthy: agent.inventory().iter().map(|d| d.index).collect(),
    };
    let (tx, rx) = watch::channel(Arc::new(devices));
    let state = Arc::new(PluginState {
        devices: rx,
        pods,
        pod_resources: setup.pod_resources.clone(),
    });
    tokio::spawn(register::run(setup.dir.clone(), state, stop.clone()));
    Some(tx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_needs_a_recent_successful_sample() {
        let r = Readiness::new(Duration::from_secs(5));
        let err = r.check_at(Duration::from_secs(1)).unwrap_err();
        assert!(err.contains("no successful sample"), "{err}");
        r.sampled();
        let at = r.started.elapsed();
        assert_eq!(r.check_at(at + Duration::from_secs(14)), Ok(()));
        let err = r.check_at(at + Duration::from_secs(16)).unwrap_err();
        assert!(err.contains("last successful sample 16 s ago"), "{err}");
        // A quick interval still allows 10 s.
        assert_eq!(
            Readiness::new(Duration::from_millis(100)).stale_after,
            Duration::from_secs(10)
        );
    }

    #[test]
    fn substance_ignores_only_the_heartbeat() {
        let mut a = NodePublication {
            labels: Default::default(),
            annotations: [(ANNOTATION_HEARTBEAT.to_string(), "t1".to_string())].into(),
        };
        let mut b = a.clone();
        b.annotations
            .insert(ANNOTATION_HEARTBEAT.into(), "t2".into());
        assert_eq!(substance(&a), substance(&b));
        a.annotations
            .insert("zhisuan.io/unhealthy-gpus".into(), "1".into());
        assert_ne!(substance(&a), substance(&b));
    }
}
