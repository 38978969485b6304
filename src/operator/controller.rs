//! The controller: observe (reflectors) → snapshot → plan → act.
//!
//! One scheduling loop runs a pass on every watch event (coalesced) and on a
//! resync tick. Only the Lease holder plans and writes; `Leadership` is
//! checked before every write, so a replica that lost its term mid-pass stops.
//! A launch writes the gang's placement into the workload's status FIRST
//! (phase Admitted): that is the commit point a new leader resumes from, with
//! deterministic pod names so nothing is ever duplicated. Per-object
//! lifecycle (finalizer, deletion cleanup, phase from owned pods) runs in the
//! kube-rs `Controller` reconcilers of `reconcile.rs`, started by [`Controller::run`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, store::Writer, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, Resource, ResourceExt};
use serde_json::{json, Value};
use tokio::sync::{watch, Notify};

use super::crd::{
    ComputeRegion, InferenceService, ReplicaPlacement, TenantQuota, TrainingJob, WorkloadStatus,
};
use super::leader::{Elector, Leadership, LeaseTiming};
use super::members::{member_node_view, member_pod_view, MemberObjects, Members, PodsIn};
use super::metering;
use super::metrics::OperatorMetrics;
use super::reconcile;
use super::regions::{region_catalog, region_statuses};
use super::snapshot::{
    self, keys, Kind, MonthToDate, NodeView, PodView, QuotaView, WorkloadKey, WorkloadView,
};
use super::tokens::{self, ServingService};
use super::usage::UsageSource;
use crate::jobs::{rfc3339, set_condition};
use crate::ledger::Ledger;
use crate::schedule::{self as plan, Action, PlanConfig, Snapshot};
use crate::telemetry::tokens::{run_token_loop, TokenScrapeConfig, TokenTarget};

/// Field manager of the controller's server-side applies.
pub const FIELD_MANAGER: &str = "zhisuan-controller";

/// Settings of one controller replica.
#[derive(Clone, Debug)]
pub struct ControllerConfig {
    /// This replica's name in the Lease (pod name in a cluster).
    pub identity: String,
    pub lease_namespace: String,
    pub lease_name: String,
    pub timing: LeaseTiming,
    pub plan: PlanConfig,
    /// A pass runs at least this often even without watch events.
    pub resync: Duration,
    /// Concurrent API calls while launching a gang.
    pub parallelism: usize,
    /// Month-to-date use (monthly limits) is re-read from its source at most
    /// this often.
    pub usage_refresh: Duration,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            identity: "zhisuan-controller".into(),
            lease_namespace: "default".into(),
            lease_name: "zhisuan-controller".into(),
            timing: LeaseTiming::default(),
            plan: PlanConfig::default(),
            resync: Duration::from_secs(5),
            parallelism: 32,
            usage_refresh: Duration::from_secs(30),
        }
    }
}

/// A status this replica wrote that its reflector may not show yet.
struct Written {
    /// resourceVersion the API server gave the write.
    written_rv: String,
    status: WorkloadStatus,
    at: std::time::Instant,
}

/// Whether a store showing `store_rv` already reflects a write that got
/// `written_rv`. resourceVersions are opaque, but etcd's (and the stand-in's)
/// are increasing integers; otherwise only equality is trusted.
fn caught_up(store_rv: &str, written_rv: &str) -> bool {
    match (store_rv.parse::<u64>(), written_rv.parse::<u64>()) {
        (Ok(a), Ok(b)) => a >= b,
        _ => store_rv == written_rv,
    }
}

/// Views of unchanged objects, reused across passes: a pass converts only
/// what changed since the last one (keyed by uid, checked by resourceVersion).
#[derive(Default)]
struct ViewCache {
    /// Models the cached workload views were validated against.
    known: BTreeSet<String>,
    nodes: HashMap<String, (String, NodeView)>,
    pods: HashMap<String, (String, PodView)>,
    training: HashMap<String, (String, WorkloadView)>,
    inference: HashMap<String, (String, WorkloadView)>,
    /// Member clusters' views, per region (uids are unique per cluster only).
    members: HashMap<String, MemberViewCache>,
    /// InferenceServices' token endpoints (each spec parsed once per version).
    services: HashMap<String, (String, Option<ServingService>)>,
    /// Nodes' energy reports (each annotation parsed once per version).
    energy: HashMap<String, (String, Option<NodeEnergy>)>,
}

/// A node's key and its agent's energy report.
type NodeEnergy = (String, Arc<crate::ledger::EnergyReport>);

/// One member cluster's cached views.
#[derive(Default)]
struct MemberViewCache {
    nodes: HashMap<String, (String, NodeView)>,
    pods: HashMap<String, (String, PodView)>,
    energy: HashMap<String, (String, Option<NodeEnergy>)>,
}

impl ViewCache {
    /// Views of the listed member clusters' nodes and pods, converted only
    /// where they changed; a region no longer listed loses its cache.
    fn member_views(&mut self, members: &[MemberObjects]) -> (Vec<NodeView>, Vec<PodView>) {
        let mut next = HashMap::with_capacity(members.len());
        let (mut nodes, mut pods) = (Vec::new(), Vec::new());
        for m in members {
            let mut c = self.members.remove(&m.region).unwrap_or_default();
            nodes.extend(cached_views(&mut c.nodes, &m.nodes, |n| {
                member_node_view(&m.region, n)
            }));
            pods.extend(cached_views(&mut c.pods, &m.pods, |p| {
                member_pod_view(&m.region, p)
            }));
            next.insert(m.region.clone(), c);
        }
        self.members = next;
        (nodes, pods)
    }

    /// The energy reports of the home cluster's and the member clusters'
    /// nodes (call after [`Self::member_views`], which keeps the member caches).
    fn node_energy(
        &mut self,
        nodes: &[Arc<Node>],
        members: &[MemberObjects],
    ) -> BTreeMap<String, Arc<crate::ledger::EnergyReport>> {
        let mut out: BTreeMap<_, _> =
            cached_views(&mut self.energy, nodes, |n| metering::node_energy(None, n))
                .into_iter()
                .flatten()
                .collect();
        for m in members {
            let c = self.members.entry(m.region.clone()).or_default();
            out.extend(
                cached_views(&mut c.energy, &m.nodes, |n| {
                    metering::node_energy(Some(&m.region), n)
                })
                .into_iter()
                .flatten(),
            );
        }
        out
    }

    /// The token endpoints of the InferenceServices that have one.
    fn serving_services(&mut self, inference: &[Arc<DynamicObject>]) -> Vec<ServingService> {
        cached_views(&mut self.services, inference, tokens::serving_service)
            .into_iter()
            .flatten()
            .collect()
    }
}

/// Sends `value` on `tx` only when it differs from the current one (so the
/// receivers wake only for a change).
fn publish_if_changed<T: PartialEq>(tx: &watch::Sender<T>, value: T) {
    tx.send_if_modified(|current| {
        let changed = *current != value;
        if changed {
            *current = value;
        }
        changed
    });
}

/// Views of `objects`, from `cache` where the resourceVersion is unchanged;
/// the cache keeps exactly the objects seen now.
fn cached_views<K: Resource, V: Clone>(
    cache: &mut HashMap<String, (String, V)>,
    objects: &[Arc<K>],
    make: impl Fn(&K) -> V,
) -> Vec<V> {
    let mut next = HashMap::with_capacity(objects.len());
    let mut out = Vec::with_capacity(objects.len());
    for obj in objects {
        let meta = obj.meta();
        let key = meta
            .uid
            .clone()
            .or_else(|| meta.name.clone())
            .unwrap_or_default();
        let rv = meta.resource_version.clone().unwrap_or_default();
        let view = match cache.remove(&key) {
            Some((old_rv, v)) if old_rv == rv && !rv.is_empty() => v,
            _ => make(obj),
        };
        out.push(view.clone());
        next.insert(key, (rv, view));
    }
    *cache = next;
    out
}

/// The last month-to-date figures read, per tenant.
#[derive(Default)]
struct MonthCache {
    read_at: Option<std::time::Instant>,
    tenants: BTreeSet<String>,
    by_tenant: BTreeMap<String, MonthToDate>,
}

/// One controller replica.
pub struct Controller {
    client: Client,
    config: ControllerConfig,
    metrics: OperatorMetrics,
    elector: Option<Elector>,
    leadership: Leadership,
    ready: Arc<AtomicBool>,
    recorder: Recorder,
    /// Statuses written but maybe not yet in the reflector, by workload uid.
    written: std::sync::Mutex<HashMap<String, Written>>,
    views: std::sync::Mutex<ViewCache>,
    /// The scheduler (its engine and learned shapes carry over between
    /// passes); locked only around the pure plan, never across an await.
    scheduler: std::sync::Mutex<plan::Scheduler>,
    /// Where monthly limits read month-to-date use (none: not enforced).
    usage: Option<Arc<dyn UsageSource>>,
    month: std::sync::Mutex<MonthCache>,
    /// Token counting of InferenceServices into the ledger (none: off).
    tokens: Option<TokenCounting>,
    /// Member clusters of ComputeRegions with a kubeconfig Secret (set by `run`).
    members: std::sync::OnceLock<Arc<Members>>,
    /// GPU-time metering of placed pods into the ledger (none: off).
    metering: Option<GpuMetering>,
    /// ComputeVouchers issued into this ledger, synced this often (none: off).
    vouchers: Option<(Ledger, Duration)>,
}

/// The GPU meter's settings and the channel its observations go through.
struct GpuMetering {
    ledger: Ledger,
    config: metering::MeterConfig,
    metrics: Option<metering::MeterMetrics>,
    observed: watch::Sender<metering::Observed>,
}

/// The token loop's settings and the channel its targets go through.
struct TokenCounting {
    ledger: Ledger,
    config: TokenScrapeConfig,
    targets: watch::Sender<Vec<TokenTarget>>,
}

/// The reflector stores the controller reads its snapshots from.
struct Stores {
    nodes: Store<Node>,
    pods: Store<Pod>,
    training: Store<DynamicObject>,
    inference: Store<DynamicObject>,
    quotas: Store<DynamicObject>,
    regions: Store<DynamicObject>,
}

/// A reflector with watch settings (e.g. a label selector), waking `notify` on
/// every event.
pub(super) fn spawn_reflector<K>(
    api: Api<K>,
    config: watcher::Config,
    writer: Writer<K>,
    notify: Arc<Notify>,
) -> tokio::task::JoinHandle<()>
where
    K: kube::Resource
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
    K::DynamicType: std::hash::Hash + Eq + Clone + Send + Sync,
{
    let stream = reflector::reflector(writer, watcher(api, config).default_backoff());
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(ev) = stream.next().await {
            if let Err(e) = ev {
                tracing::warn!(error = %e, "watch error (retrying with backoff)");
            }
            notify.notify_one();
        }
    })
}

impl Controller {
    /// Builds a replica; its metrics go on `registry`.
    pub fn new(
        client: Client,
        config: ControllerConfig,
        registry: &prometheus::Registry,
    ) -> anyhow::Result<Self> {
        let metrics = OperatorMetrics::new(registry)?;
        let elector = Elector::new(
            Api::namespaced(client.clone(), &config.lease_namespace),
            &config.lease_name,
            &config.identity,
            config.timing.clone(),
        );
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: FIELD_MANAGER.into(),
                instance: Some(config.identity.clone()),
            },
        );
        Ok(Controller {
            client,
            leadership: elector.leadership(),
            elector: Some(elector),
            scheduler: std::sync::Mutex::new(plan::Scheduler::new(config.plan.clone())),
            config,
            metrics,
            ready: Arc::new(AtomicBool::new(false)),
            recorder,
            written: Default::default(),
            views: Default::default(),
            usage: None,
            month: Default::default(),
            tokens: None,
            members: Default::default(),
            metering: None,
            vouchers: None,
        })
    }

    /// Enforces TenantQuotas' monthly limits with use read from `source`
    /// (the ledger); without one they are not enforced.
    pub fn with_usage(mut self, source: Arc<dyn UsageSource>) -> Self {
        self.usage = Some(source);
        self
    }

    /// Counts the tokens of every InferenceService with `spec.metrics` into
    /// `ledger`: while this replica leads, the token loop scrapes each
    /// running serving pod every `config.interval`.
    pub fn with_token_counting(mut self, ledger: Ledger, config: TokenScrapeConfig) -> Self {
        self.tokens = Some(TokenCounting {
            ledger,
            config,
            targets: watch::channel(Vec::new()).0,
        });
        self
    }

    /// Meters the GPU time of every pod this controller placed into
    /// `ledger` while this replica leads (`operator::metering`); the meter's
    /// counters go on `registry`.
    pub fn with_gpu_metering(
        mut self,
        ledger: Ledger,
        config: metering::MeterConfig,
        registry: &prometheus::Registry,
    ) -> anyhow::Result<Self> {
        crate::ledger::windows::check_period(config.period.as_secs() as i64)
            .map_err(|e| e.into_anyhow())?;
        self.metering = Some(GpuMetering {
            ledger,
            config,
            metrics: Some(metering::MeterMetrics::new(registry)?),
            observed: watch::channel(metering::Observed::default()).0,
        });
        Ok(self)
    }

    /// Issues every ComputeVoucher into `ledger` (once, by uid) and keeps its
    /// status at the ledger's balance, every `interval` while this replica
    /// leads (`operator::vouchers`).
    pub fn with_vouchers(mut self, ledger: Ledger, interval: Duration) -> Self {
        self.vouchers = Some((ledger, interval));
        self
    }

    fn spawn_voucher_loop(
        &self,
        shutdown: watch::Receiver<bool>,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let (ledger, interval) = self.vouchers.clone()?;
        let client = self.client.clone();
        Some(
            self.spawn_while_leading(shutdown, interval, "voucher sync", move |term_over| {
                super::vouchers::run_voucher_loop(
                    client.clone(),
                    ledger.clone(),
                    interval,
                    term_over,
                )
            }),
        )
    }

    /// Runs the token loop whenever this replica leads (it stops when the
    /// term ends; the next term starts a fresh one, whose first scrape of
    /// each pod only sets its baseline).
    fn spawn_token_loop(
        &self,
        shutdown: watch::Receiver<bool>,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let counting = self.tokens.as_ref()?;
        let (ledger, config) = (counting.ledger.clone(), counting.config.clone());
        let targets = counting.targets.subscribe();
        let pause = config.interval;
        Some(
            self.spawn_while_leading(shutdown, pause, "token loop", move |term_over| {
                run_token_loop(ledger.clone(), targets.clone(), config.clone(), term_over)
            }),
        )
    }

    /// Runs the GPU meter whenever this replica leads; each term reads the
    /// meter's cursor from the ledger and meters on from there.
    fn spawn_gpu_meter(
        &self,
        shutdown: watch::Receiver<bool>,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let m = self.metering.as_ref()?;
        let (ledger, config, metrics) = (m.ledger.clone(), m.config.clone(), m.metrics.clone());
        let observed = m.observed.subscribe();
        let pause = config.period;
        Some(
            self.spawn_while_leading(shutdown, pause, "GPU meter", move |term_over| {
                metering::run_gpu_meter(
                    ledger.clone(),
                    observed.clone(),
                    config.clone(),
                    metrics.clone(),
                    term_over,
                )
            }),
        )
    }

    /// Runs `work` for every term this replica leads, handing it a future
    /// that resolves when the term ends; a failed run is restarted after
    /// `pause` while the term lasts.
    fn spawn_while_leading<F, Fut>(
        &self,
        shutdown: watch::Receiver<bool>,
        pause: Duration,
        what: &'static str,
        work: F,
    ) -> tokio::task::JoinHandle<()>
    where
        F: Fn(std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>) -> Fut
            + Send
            + 'static,
        Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
    {
        let leadership = self.leadership.clone();
        // How often leadership is re-checked (it has no change notification).
        let poll = self
            .config
            .timing
            .retry_period
            .min(Duration::from_millis(200));
        /// Waits until `leading` is what leadership says, or shutdown (false).
        async fn until(
            leadership: &Leadership,
            leading: bool,
            shutdown: &mut watch::Receiver<bool>,
            poll: Duration,
        ) -> bool {
            loop {
                if *shutdown.borrow() {
                    return false;
                }
                if leadership.is_leader() == leading {
                    return true;
                }
                tokio::select! {
                    _ = tokio::time::sleep(poll) => {}
                    changed = shutdown.changed() => if changed.is_err() { return false; },
                }
            }
        }
        tokio::spawn(async move {
            let mut shutdown = shutdown;
            while until(&leadership, true, &mut shutdown, poll).await {
                let mut stop = shutdown.clone();
                let term_over = {
                    let leadership = leadership.clone();
                    async move {
                        until(&leadership, false, &mut stop, poll).await;
                    }
                };
                if let Err(e) = work(Box::pin(term_over)).await {
                    tracing::warn!(error = %e, what, "failed; restarting");
                    tokio::time::sleep(pause).await;
                }
            }
        })
    }

    /// Month-to-date use of every tenant with a TenantQuota, when some quota
    /// has a monthly limit. Re-read at most every `usage_refresh`, off the
    /// async threads; when the source fails, the last figures stay in force.
    async fn month_use(&self, quotas: &[QuotaView]) -> BTreeMap<String, MonthToDate> {
        let Some(source) = &self.usage else {
            return BTreeMap::new();
        };
        let monthly = quotas
            .iter()
            .any(|q| !q.spec.gpu_hours_per_month.is_empty() || !q.spec.tokens_per_month.is_empty());
        if !monthly {
            return BTreeMap::new();
        }
        let tenants: BTreeSet<String> = quotas.iter().map(|q| q.spec.tenant.clone()).collect();
        {
            let cache = self.month.lock().unwrap();
            if cache.tenants == tenants
                && cache
                    .read_at
                    .is_some_and(|t| t.elapsed() < self.config.usage_refresh)
            {
                return cache.by_tenant.clone();
            }
        }
        let source = source.clone();
        let now = chrono::Utc::now().timestamp();
        let wanted = tenants.clone();
        let read = tokio::task::spawn_blocking(move || {
            wanted
                .iter()
                .map(|t| Ok((t.clone(), source.month_to_date(t, now)?)))
                .collect::<anyhow::Result<BTreeMap<_, _>>>()
        })
        .await
        .map_err(anyhow::Error::from)
        .and_then(|r| r);
        let mut cache = self.month.lock().unwrap();
        match read {
            Ok(by_tenant) => {
                *cache = MonthCache {
                    read_at: Some(std::time::Instant::now()),
                    tenants,
                    by_tenant,
                };
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading month-to-date use failed; keeping the last figures");
                // Retry after the refresh interval, not on every pass.
                cache.read_at = Some(std::time::Instant::now());
                cache.tenants = tenants;
            }
        }
        cache.by_tenant.clone()
    }

    /// Whether this replica currently holds the Lease.
    pub fn leadership(&self) -> Leadership {
        self.leadership.clone()
    }

    /// True once every reflector has listed (for `/readyz`).
    pub fn ready_flag(&self) -> Arc<AtomicBool> {
        self.ready.clone()
    }

    /// Runs until `shutdown` turns true.
    pub async fn run(mut self, shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
        let notify = Arc::new(Notify::new());
        let client = self.client.clone();
        let _ = self
            .members
            .set(Arc::new(Members::new(client.clone(), notify.clone())));
        let ar_tj = ApiResource::erase::<TrainingJob>(&());
        let ar_is = ApiResource::erase::<InferenceService>(&());
        let ar_tq = ApiResource::erase::<TenantQuota>(&());
        let ar_cr = ApiResource::erase::<ComputeRegion>(&());
        let w_nodes = Writer::<Node>::new(());
        let w_pods = Writer::<Pod>::new(());
        let w_tj = Writer::<DynamicObject>::new(ar_tj.clone());
        let w_is = Writer::<DynamicObject>::new(ar_is.clone());
        let w_tq = Writer::<DynamicObject>::new(ar_tq.clone());
        let w_cr = Writer::<DynamicObject>::new(ar_cr.clone());
        let stores = Stores {
            nodes: w_nodes.as_reader(),
            pods: w_pods.as_reader(),
            training: w_tj.as_reader(),
            inference: w_is.as_reader(),
            quotas: w_tq.as_reader(),
            regions: w_cr.as_reader(),
        };
        let all = watcher::Config::default;
        let tasks = vec![
            spawn_reflector(
                Api::<Node>::all(client.clone()),
                all(),
                w_nodes,
                notify.clone(),
            ),
            spawn_reflector(
                Api::<Pod>::all(client.clone()),
                all(),
                w_pods,
                notify.clone(),
            ),
            spawn_reflector(
                Api::<DynamicObject>::all_with(client.clone(), &ar_tj),
                all(),
                w_tj,
                notify.clone(),
            ),
            spawn_reflector(
                Api::<DynamicObject>::all_with(client.clone(), &ar_is),
                all(),
                w_is,
                notify.clone(),
            ),
            spawn_reflector(
                Api::<DynamicObject>::all_with(client.clone(), &ar_tq),
                all(),
                w_tq,
                notify.clone(),
            ),
            spawn_reflector(
                Api::<DynamicObject>::all_with(client.clone(), &ar_cr),
                all(),
                w_cr,
                notify.clone(),
            ),
        ];
        let elector = self.elector.take().expect("run once");
        let election = tokio::spawn(elector.run(shutdown.clone()));
        let token_loop = self.spawn_token_loop(shutdown.clone());
        let gpu_meter = self.spawn_gpu_meter(shutdown.clone());
        let voucher_loop = self.spawn_voucher_loop(shutdown.clone());
        let this = Arc::new(self);
        let reconcilers = [Kind::Training, Kind::Inference]
            .map(|kind| reconcile::spawn(this.clone(), client.clone(), kind, stores.pods.clone()));
        let result = this.schedule_loop(&stores, notify, shutdown).await;
        for t in tasks
            .into_iter()
            .chain(token_loop)
            .chain(gpu_meter)
            .chain(voucher_loop)
            .chain(reconcilers)
        {
            t.abort();
        }
        let _ = election.await;
        result
    }

    async fn schedule_loop(
        &self,
        stores: &Stores,
        notify: Arc<Notify>,
        mut shutdown: watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        for ready in [
            stores.nodes.wait_until_ready().await,
            stores.pods.wait_until_ready().await,
            stores.training.wait_until_ready().await,
            stores.inference.wait_until_ready().await,
            stores.quotas.wait_until_ready().await,
            stores.regions.wait_until_ready().await,
        ] {
            ready.map_err(|e| anyhow::anyhow!("reflector ended before listing: {e}"))?;
        }
        self.ready.store(true, Ordering::SeqCst);
        let mut was_leader = false;
        loop {
            if *shutdown.borrow() {
                return Ok(());
            }
            let leader = self.leadership.is_leader();
            self.metrics.is_leader.set(leader as i64);
            if leader {
                if !was_leader {
                    tracing::info!(identity = %self.config.identity, "leading: resuming from cluster state");
                    // Our own earlier writes are visible in the stores by now or superseded.
                    self.written.lock().unwrap().clear();
                }
                self.pass(stores).await;
            }
            was_leader = leader;
            tokio::select! {
                _ = notify.notified() => {}
                _ = tokio::time::sleep(self.config.resync.min(self.config.timing.retry_period)) => {}
                _ = shutdown.changed() => {}
            }
        }
    }

    /// One observe → snapshot → plan → act pass.
    async fn pass(&self, stores: &Stores) {
        let node_objects = stores.nodes.state();
        let pod_objects = stores.pods.state();
        let training = stores.training.state();
        let inference = stores.inference.state();
        let quotas = stores.quotas.state();
        let regions = stores.regions.state();
        let quota_views: Vec<QuotaView> = quotas.iter().map(|q| snapshot::quota_view(q)).collect();
        let month_use = self.month_use(&quota_views).await;
        let mut region_views: Vec<snapshot::RegionView> =
            regions.iter().map(|r| snapshot::region_view(r)).collect();
        let members = self.members();
        members.sync(&region_views).await;
        for r in region_views.iter_mut() {
            if r.spec.kubeconfig_secret_ref.is_some() {
                r.member_problem = members.problem(&r.name);
            }
        }
        let member_objects = members.objects();
        let mut services = Vec::new();
        let mut node_energy = BTreeMap::new();
        let mut snap = {
            let mut cache = self.views.lock().unwrap();
            let cache = &mut *cache;
            let mut nodes = cached_views(&mut cache.nodes, &node_objects, snapshot::node_view);
            let mut pods = cached_views(&mut cache.pods, &pod_objects, snapshot::pod_view);
            let (member_nodes, member_pods) = cache.member_views(&member_objects);
            nodes.extend(member_nodes);
            pods.extend(member_pods);
            if self.tokens.is_some() {
                services = cache.serving_services(&inference);
            }
            if self.metering.is_some() {
                node_energy = cache.node_energy(&node_objects, &member_objects);
            }
            let regions = region_catalog(&region_views, &nodes, self.config.plan.region_scoring);
            let mut snap = Snapshot {
                now: chrono::Utc::now().timestamp(),
                pods,
                nodes,
                workloads: Vec::new(),
                quotas: quota_views,
                month_use,
                regions,
            };
            let known = snap.known_models();
            if known != cache.known {
                // Validation depends on the known models: convert everything again.
                cache.training.clear();
                cache.inference.clear();
                cache.known = known.clone();
            }
            snap.workloads = cached_views(&mut cache.training, &training, |o| {
                snapshot::workload_view(Kind::Training, o, &known)
            });
            snap.workloads
                .extend(cached_views(&mut cache.inference, &inference, |o| {
                    snapshot::workload_view(Kind::Inference, o, &known)
                }));
            snapshot::key_legacy_member_placements(&mut snap.workloads, &region_views);
            snap
        };
        if let Some(counting) = &self.tokens {
            let pods: Vec<_> = pod_objects
                .iter()
                .filter_map(|p| tokens::serving_pod(p))
                .collect();
            let node_regions: BTreeMap<String, String> = snap
                .nodes
                .iter()
                .map(|n| (n.name.clone(), n.region.clone()))
                .collect();
            let targets = tokens::token_targets(&services, &pods, &node_regions);
            publish_if_changed(&counting.targets, targets);
        }
        if let Some(m) = &self.metering {
            let index = metering::MeterIndex::new(&snap.nodes, &snap.workloads, &region_views);
            let member_pods: Vec<(&str, &[Arc<Pod>])> = member_objects
                .iter()
                .map(|m| (m.region.as_str(), m.pods.as_slice()))
                .collect();
            let mut observed = metering::observe(&index, &pod_objects, &member_pods);
            observed.energy = node_energy;
            publish_if_changed(&m.observed, observed);
        }
        let mut objects: BTreeMap<WorkloadKey, Arc<DynamicObject>> = BTreeMap::new();
        {
            // Overlay what we wrote but the reflector has not shown yet.
            let mut written = self.written.lock().unwrap();
            for (view, obj) in snap
                .workloads
                .iter_mut()
                .zip(training.iter().chain(inference.iter()))
            {
                let rv = obj.resource_version().unwrap_or_default();
                match written.get(&view.uid) {
                    Some(w)
                        if !caught_up(&rv, &w.written_rv)
                            && w.at.elapsed() < Duration::from_secs(60) =>
                    {
                        view.status = w.status.clone()
                    }
                    Some(_) => {
                        written.remove(&view.uid);
                    }
                    None => {}
                }
                objects.insert(view.key.clone(), obj.clone());
            }
        }
        let by_name = |objs: &[Arc<DynamicObject>]| -> BTreeMap<String, Arc<DynamicObject>> {
            objs.iter().map(|o| (o.name_any(), o.clone())).collect()
        };
        let quota_objects = by_name(&quotas);
        let region_objects = by_name(&regions);
        let mut plan = self
            .scheduler
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .plan(&snap);
        plan.actions.extend(region_statuses(
            &region_views,
            snap.regions.as_ref(),
            &plan.regions,
            snap.now,
        ));
        self.metrics.record(&plan);
        let mut work = Vec::with_capacity(plan.actions.len());
        for action in plan.actions {
            let obj = match &action {
                Action::SetStatus { key: k, .. }
                | Action::Launch { key: k, .. }
                | Action::Stop { key: k, .. } => objects.get(k).cloned(),
                Action::QuotaStatus { name, .. } => quota_objects.get(name).cloned(),
                Action::RegionStatus { name, .. } => region_objects.get(name).cloned(),
            };
            if let Some(obj) = obj {
                work.push(async move {
                    if !self.leadership.is_leader() {
                        return;
                    }
                    if let Err(e) = self.act(action, &obj).await {
                        tracing::warn!(error = %e, object = %obj.name_any(), "action failed; retrying next pass");
                    }
                });
            }
        }
        // Actions touch distinct objects; run them concurrently, bounded.
        futures::stream::iter(work)
            .buffer_unordered(self.config.parallelism)
            .collect::<Vec<()>>()
            .await;
    }

    pub(super) fn workload_api(&self, key: &WorkloadKey) -> Api<DynamicObject> {
        let ar = reconcile::workload_resource(key.kind);
        Api::namespaced_with(self.client.clone(), &key.namespace, &ar)
    }

    /// How often a standby retries (and the leadership poll period).
    pub(super) fn retry_period(&self) -> Duration {
        self.config.timing.retry_period
    }

    /// A pass runs at least this often.
    pub(super) fn resync(&self) -> Duration {
        self.config.resync
    }

    pub(super) fn plan_config(&self) -> &PlanConfig {
        &self.config.plan
    }

    async fn apply_status(
        &self,
        key: &WorkloadKey,
        obj: &DynamicObject,
        status: &WorkloadStatus,
    ) -> Result<(), kube::Error> {
        let api = self.workload_api(key);
        let body = json!({
            "apiVersion": obj.types.as_ref().map(|t| t.api_version.clone()).unwrap_or_default(),
            "kind": key.kind.kind_name(),
            "status": status,
        });
        let pp = PatchParams::apply(FIELD_MANAGER).force();
        let after = api
            .patch_status(&key.name, &pp, &Patch::Apply(&body))
            .await?;
        self.written.lock().unwrap().insert(
            obj.uid().unwrap_or_default(),
            Written {
                written_rv: after.resource_version().unwrap_or_default(),
                status: status.clone(),
                at: std::time::Instant::now(),
            },
        );
        Ok(())
    }

    async fn event(
        &self,
        obj: &DynamicObject,
        key: &WorkloadKey,
        type_: EventType,
        reason: &str,
        note: String,
    ) {
        let mut reference = obj.object_ref(&ApiResource::erase::<TrainingJob>(&()));
        reference.kind = Some(key.kind.kind_name().into());
        let ev = KubeEvent {
            type_,
            reason: reason.into(),
            note: Some(note.chars().take(1000).collect()),
            action: "Scheduling".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &reference).await {
            tracing::debug!(error = %e, "event not recorded");
        }
    }

    /// The cluster holding the pods of a placement in `region`.
    pub(super) fn cluster_of(&self, region: Option<&str>) -> Result<PodsIn, kube::Error> {
        self.members().cluster_of(region).map_err(unavailable)
    }

    /// The member clusters (empty before `run`).
    pub(super) fn members(&self) -> Arc<Members> {
        self.members
            .get_or_init(|| Arc::new(Members::new(self.client.clone(), Arc::new(Notify::new()))))
            .clone()
    }

    /// Deletes the named pods in the cluster `at` (absent ones are fine).
    /// A member cluster that cannot be reached now is an error (retried
    /// later): other clusters' pods of the same name are never touched.
    pub(super) async fn delete_pods(
        &self,
        namespace: &str,
        at: &PodsIn,
        pods: &[String],
    ) -> Result<(), kube::Error> {
        if pods.is_empty() {
            return Ok(());
        }
        let apis = self
            .members()
            .pod_apis(at, namespace)
            .map_err(unavailable)?;
        let targets: Vec<(Api<Pod>, String)> = apis
            .iter()
            .flat_map(|api| pods.iter().map(move |p| (api.clone(), p.clone())))
            .collect();
        let results: Vec<Result<(), kube::Error>> = futures::stream::iter(targets)
            .map(|(api, name)| async move {
                match api.delete(&name, &DeleteParams::default()).await {
                    Ok(_) => Ok(()),
                    Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
                    Err(e) => Err(e),
                }
            })
            .buffer_unordered(self.config.parallelism)
            .collect()
            .await;
        results.into_iter().collect()
    }

    pub(super) async fn act(&self, action: Action, obj: &DynamicObject) -> Result<(), kube::Error> {
        match action {
            Action::SetStatus { key, status } => {
                let old_reason = obj
                    .data
                    .pointer("/status/reason")
                    .and_then(Value::as_str)
                    .map(str::to_string);
                self.apply_status(&key, obj, &status).await?;
                if status.reason != old_reason {
                    let message = status
                        .conditions
                        .iter()
                        .find(|c| c.type_ == "Scheduled")
                        .map(|c| c.message.clone())
                        .unwrap_or_default();
                    let reason = status.reason.clone().unwrap_or_default();
                    let type_ = if matches!(reason.as_str(), "Completed") {
                        EventType::Normal
                    } else {
                        EventType::Warning
                    };
                    self.event(obj, &key, type_, &reason, message).await;
                }
                Ok(())
            }
            Action::Stop {
                key,
                pods,
                region,
                status,
            } => {
                let at = self.cluster_of(region.as_deref())?;
                self.delete_pods(&key.namespace, &at, &pods).await?;
                let preempted = status.phase.as_deref() == Some("Preempted");
                self.apply_status(&key, obj, &status).await?;
                if preempted {
                    self.metrics.preemptions.inc();
                }
                let message = status
                    .conditions
                    .iter()
                    .find(|c| c.type_ == "Scheduled")
                    .map(|c| c.message.clone());
                self.event(
                    obj,
                    &key,
                    EventType::Warning,
                    status.reason.as_deref().unwrap_or("Stopped"),
                    message.unwrap_or_default(),
                )
                .await;
                Ok(())
            }
            Action::QuotaStatus { name, status } => {
                self.apply_cluster_status::<TenantQuota>(&name, json!(status))
                    .await
            }
            Action::RegionStatus { name, status } => {
                self.apply_cluster_status::<ComputeRegion>(&name, json!(status))
                    .await
            }
            Action::Launch {
                key,
                tenant,
                status,
                write_status,
            } => {
                if write_status {
                    self.apply_status(&key, obj, &status).await?;
                }
                match self.launch(&key, &tenant, obj, &status).await {
                    Ok(bound) => {
                        let mut running = status.clone();
                        running.phase = Some("Running".into());
                        running.reason = Some("Bound".into());
                        running.started_at = Some(rfc3339(chrono::Utc::now().timestamp()));
                        self.metrics.placement_decisions.inc_by(bound);
                        self.apply_status(&key, obj, &running).await?;
                        let message = running
                            .conditions
                            .iter()
                            .find(|c| c.type_ == "Scheduled")
                            .map(|c| c.message.clone())
                            .unwrap_or_default();
                        self.event(obj, &key, EventType::Normal, "Scheduled", message)
                            .await;
                        Ok(())
                    }
                    Err(e) => {
                        // All or nothing: remove every pod of the gang and requeue.
                        self.metrics.bind_errors.inc();
                        let pods: Vec<String> = status
                            .placement
                            .iter()
                            .flat_map(|p| p.replicas.iter().map(|r| r.pod.clone()))
                            .collect();
                        let region = status.placement.as_ref().and_then(|p| p.region.as_deref());
                        let at = self.cluster_of(region)?;
                        self.delete_pods(&key.namespace, &at, &pods).await?;
                        let mut pending = status.clone();
                        pending.phase = Some("Pending".into());
                        pending.reason = Some("BindFailed".into());
                        pending.placement = None;
                        let now = chrono::Utc::now().timestamp();
                        let message = format!("launch failed and was rolled back: {e}");
                        let generation = obj.metadata.generation.unwrap_or(0);
                        set_condition(
                            &mut pending,
                            "Scheduled",
                            false,
                            "BindFailed",
                            message.clone(),
                            now,
                            generation,
                        );
                        self.apply_status(&key, obj, &pending).await?;
                        self.event(obj, &key, EventType::Warning, "BindFailed", message)
                            .await;
                        Ok(())
                    }
                }
            }
        }
    }

    /// Server-side applies the status of a cluster-scoped zhisuan object.
    async fn apply_cluster_status<K>(&self, name: &str, status: Value) -> Result<(), kube::Error>
    where
        K: Resource<DynamicType = ()>,
    {
        let api: Api<DynamicObject> =
            Api::all_with(self.client.clone(), &ApiResource::erase::<K>(&()));
        let body = json!({
            "apiVersion": K::api_version(&()), "kind": K::kind(&()), "status": status,
        });
        api.patch_status(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await
        .map(|_| ())
    }

    /// Creates the gang's missing pods and binds the unbound ones, in parallel.
    /// Returns how many bindings this call made.
    async fn launch(
        &self,
        key: &WorkloadKey,
        tenant: &str,
        obj: &DynamicObject,
        status: &WorkloadStatus,
    ) -> Result<u64, String> {
        let placement = status.placement.clone().ok_or("no placement")?;
        let template = obj
            .data
            .pointer("/spec/template")
            .cloned()
            .unwrap_or_else(|| json!({}));
        let members = self.members();
        let region = placement.region.clone().unwrap_or_default();
        // In a member cluster the pods carry the owner labels but no owner
        // reference (the workload is not in that cluster).
        let (pods, owner) = if members.is_member(&region) {
            let api = members
                .pod_api(&region, &key.namespace)
                .ok_or_else(|| format!("member cluster of region {region} is not connected"))?;
            (api, None)
        } else {
            (
                Api::namespaced(self.client.clone(), &key.namespace),
                obj.controller_owner_ref(&ApiResource::erase::<TrainingJob>(&())),
            )
        };
        let mut jobs = Vec::with_capacity(placement.replicas.len());
        for (i, r) in placement.replicas.iter().enumerate() {
            let mut owner = owner.clone();
            if let Some(o) = owner.as_mut() {
                o.kind = key.kind.kind_name().into();
            }
            jobs.push(launch_replica(
                pods.clone(),
                key.clone(),
                tenant.to_string(),
                i as u32,
                r.clone(),
                template.clone(),
                owner,
                self.leadership.clone(),
            ));
        }
        let results: Vec<Result<bool, String>> = futures::stream::iter(jobs)
            .buffer_unordered(self.config.parallelism)
            .collect()
            .await;
        let mut bound = 0;
        for r in results {
            if r? {
                bound += 1;
            }
        }
        Ok(bound)
    }
}

/// An error for a cluster that cannot be reached now (the action is retried).
fn unavailable(message: String) -> kube::Error {
    kube::Error::Api(
        kube::core::Status::failure(&message, "ServiceUnavailable")
            .with_code(503)
            .boxed(),
    )
}

/// Creates (if missing) and binds one replica's pod. Ok(true) = bound now,
/// Ok(false) = already bound where the placement says.
#[allow(clippy::too_many_arguments)]
async fn launch_replica(
    pods: Api<Pod>,
    key: WorkloadKey,
    tenant: String,
    replica: u32,
    r: ReplicaPlacement,
    template: Value,
    owner: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference>,
    leadership: Leadership,
) -> Result<bool, String> {
    let (key, tenant, r, i) = (&key, tenant.as_str(), &r, replica);
    let annotations = replica_annotations(key, tenant, r);
    let pod = replica_pod(key, i, &r.pod, &template, &annotations, owner)?;
    if !leadership.is_leader() {
        return Err("lost leadership".to_string());
    }
    let existing = match pods.create(&PostParams::default(), &pod).await {
        Ok(p) => p,
        Err(kube::Error::Api(s)) if s.code == 409 => {
            pods.get(&r.pod).await.map_err(|e| e.to_string())?
        }
        Err(e) => return Err(format!("creating pod {}: {e}", r.pod)),
    };
    let owned = existing.labels().get(keys::WORKLOAD_NAME) == Some(&key.name);
    if !owned {
        return Err(format!("pod {} exists and is not this workload's", r.pod));
    }
    // The placement names a member cluster's node `<region>/<node>`; the pod
    // is in that cluster, bound by the node's own name.
    let node = snapshot::name_in_cluster(&r.node);
    match existing.spec.as_ref().and_then(|s| s.node_name.as_deref()) {
        Some(n) if n == node => return Ok(false),
        Some(n) if !n.is_empty() => {
            return Err(format!("pod {} is bound to {n}, not {node}", r.pod))
        }
        _ => {}
    }
    if !leadership.is_leader() {
        return Err("lost leadership".to_string());
    }
    let binding = json!({
        "apiVersion": "v1", "kind": "Binding",
        "metadata": {"name": r.pod, "annotations": annotations},
        "target": {"apiVersion": "v1", "kind": "Node", "name": node},
    });
    let res: Result<Value, kube::Error> = pods
        .create_subresource("binding", &r.pod, &PostParams::default(), &binding)
        .await;
    match res {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 409 => {
            let now = pods.get(&r.pod).await.map_err(|e| e.to_string())?;
            match now.spec.and_then(|s| s.node_name) {
                Some(n) if n == node => Ok(false),
                other => Err(format!("pod {} bound elsewhere: {other:?}", r.pod)),
            }
        }
        // The stand-in and real API servers answer 201 with a Status body.
        Err(kube::Error::SerdeError(_)) => Ok(true),
        Err(e) => Err(format!("binding pod {} to {node}: {e}", r.pod)),
    }
}

fn replica_annotations(
    key: &WorkloadKey,
    tenant: &str,
    r: &crate::operator::crd::ReplicaPlacement,
) -> BTreeMap<String, String> {
    let mut a = BTreeMap::new();
    a.insert(
        keys::GPU_DEVICES.to_string(),
        r.devices
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join(","),
    );
    if let Some(m) = r.gpu_milli {
        a.insert(keys::GPU_MILLI.to_string(), m.to_string());
    }
    a.insert(keys::TENANT.to_string(), tenant.to_string());
    a.insert(
        keys::JOB.to_string(),
        format!("{}/{}", key.namespace, key.name),
    );
    a
}

/// A replica's pod from the workload's template: deterministic name, owner
/// labels, device annotations, `schedulerName: zhisuan`, no node yet.
fn replica_pod(
    key: &WorkloadKey,
    replica: u32,
    name: &str,
    template: &Value,
    annotations: &BTreeMap<String, String>,
    owner: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference>,
) -> Result<Pod, String> {
    let mut pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": template.get("metadata").cloned().unwrap_or_else(|| json!({})),
        "spec": template.get("spec").cloned().unwrap_or_else(|| json!({"containers": []})),
    });
    pod["metadata"]["name"] = json!(name);
    pod["metadata"]["namespace"] = json!(key.namespace);
    if !pod["metadata"].get("labels").is_some_and(Value::is_object) {
        pod["metadata"]["labels"] = json!({});
    }
    pod["metadata"]["labels"][keys::WORKLOAD_KIND] = json!(key.kind.label());
    pod["metadata"]["labels"][keys::WORKLOAD_NAME] = json!(key.name);
    pod["metadata"]["labels"][keys::REPLICA] = json!(replica.to_string());
    if !pod["metadata"]
        .get("annotations")
        .is_some_and(Value::is_object)
    {
        pod["metadata"]["annotations"] = json!({});
    }
    for (k, v) in annotations {
        pod["metadata"]["annotations"][k] = json!(v);
    }
    if let Some(o) = owner {
        pod["metadata"]["ownerReferences"] = json!([o]);
    }
    pod["spec"]["schedulerName"] = json!(keys::SCHEDULER_NAME);
    if let Some(spec) = pod["spec"].as_object_mut() {
        spec.remove("nodeName");
    }
    if !pod["spec"].get("containers").is_some_and(Value::is_array) {
        pod["spec"]["containers"] = json!([]);
    }
    serde_json::from_value(pod).map_err(|e| format!("spec.template does not make a valid pod: {e}"))
}

/// Lists the Lease holder (for tests and `kubectl`-free checks).
pub async fn lease_holder(client: Client, namespace: &str, name: &str) -> Option<String> {
    let api: Api<Lease> = Api::namespaced(client, namespace);
    api.get_opt(name)
        .await
        .ok()
        .flatten()?
        .spec?
        .holder_identity
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object<K: serde::de::DeserializeOwned>(v: Value) -> Arc<K> {
        Arc::new(serde_json::from_value(v).unwrap())
    }

    fn node(name: &str, uid: &str, rv: &str, gpus: u32) -> Arc<Node> {
        object(json!({
            "metadata": {"name": name, "uid": uid, "resourceVersion": rv,
                         "labels": {"zhisuan.io/gpu-count": gpus.to_string()}}
        }))
    }

    #[test]
    fn member_views_are_converted_once_per_version_and_kept_apart_per_cluster() {
        let pod: Arc<Pod> = object(json!({
            "metadata": {"name": "p", "namespace": "ml", "uid": "1", "resourceVersion": "3"},
            "spec": {"nodeName": "kind-control-plane", "containers": []}
        }));
        // The same uid and node name in two clusters (each has its own uids).
        let listed = |far_node: Arc<Node>| {
            vec![
                MemberObjects {
                    region: "far".into(),
                    nodes: vec![far_node],
                    pods: vec![pod.clone()],
                },
                MemberObjects {
                    region: "near".into(),
                    nodes: vec![node("kind-control-plane", "1", "5", 4)],
                    pods: Vec::new(),
                },
            ]
        };
        let mut cache = ViewCache::default();
        let (nodes, pods) = cache.member_views(&listed(node("kind-control-plane", "1", "5", 8)));
        let seen: Vec<(&str, u8)> = nodes.iter().map(|n| (n.name.as_str(), n.gpus)).collect();
        assert_eq!(
            seen,
            [
                ("far/kind-control-plane", 8),
                ("near/kind-control-plane", 4)
            ]
        );
        assert_eq!(pods[0].node.as_deref(), Some("far/kind-control-plane"));
        // Same resourceVersion: the cached view (no conversion), even though
        // this object (which a real server would version anew) differs.
        let (nodes, _) = cache.member_views(&listed(node("kind-control-plane", "1", "5", 2)));
        assert_eq!(nodes[0].gpus, 8);
        // A new version is converted again.
        let (nodes, _) = cache.member_views(&listed(node("kind-control-plane", "1", "6", 2)));
        assert_eq!(nodes[0].gpus, 2);
        // A region no longer listed leaves the cache.
        cache.member_views(&listed(node("kind-control-plane", "1", "6", 2))[..1]);
        assert_eq!(cache.members.keys().collect::<Vec<_>>(), ["far"]);
    }

    #[test]
    fn token_endpoints_are_parsed_once_per_version() {
        let service = |rv: &str, port: u16| -> Arc<DynamicObject> {
            object(json!({
                "apiVersion": "zhisuan.io/v1alpha1", "kind": "InferenceService",
                "metadata": {"name": "chat", "namespace": "ai", "uid": "u1", "resourceVersion": rv},
                "spec": {"tenant": "acme", "modelName": "qwen-72b", "tokenTier": "basic",
                         "replicas": 1, "gpusPerReplica": 1, "metrics": {"port": port},
                         "template": {"spec": {"containers": []}}}
            }))
        };
        let without_metrics: Arc<DynamicObject> = object(json!({
            "apiVersion": "zhisuan.io/v1alpha1", "kind": "InferenceService",
            "metadata": {"name": "quiet", "namespace": "ai", "uid": "u2", "resourceVersion": "1"},
            "spec": {"tenant": "acme", "modelName": "m", "replicas": 1, "gpusPerReplica": 1,
                     "template": {"spec": {"containers": []}}}
        }));
        let mut cache = ViewCache::default();
        let ports = |cache: &mut ViewCache, objs: &[Arc<DynamicObject>]| -> Vec<u16> {
            cache
                .serving_services(objs)
                .iter()
                .map(|s| s.port)
                .collect()
        };
        assert_eq!(
            ports(&mut cache, &[service("1", 8000), without_metrics.clone()]),
            [8000]
        );
        // Unchanged version: not parsed again.
        assert_eq!(
            ports(&mut cache, &[service("1", 9000), without_metrics.clone()]),
            [8000]
        );
        assert_eq!(
            ports(&mut cache, &[service("2", 9000), without_metrics]),
            [9000]
        );
    }
}
