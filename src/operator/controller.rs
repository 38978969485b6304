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
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, store::Writer, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, Resource, ResourceExt};
use tokio::sync::{watch, Notify};

use super::act::Actuator;
use super::crd::{ComputeRegion, InferenceService, TenantQuota, TrainingJob, WorkloadStatus};
use super::leader::{Elector, Leadership, LeaseTiming};
use super::members::{member_node_view, member_pod_view, MemberObjects, Members};
use super::metering;
use super::metrics::OperatorMetrics;
use super::pods::DeviceResources;
use super::reconcile;
use super::regions::{region_catalog, region_statuses};
use super::snapshot::{
    self, Kind, MonthToDate, NodeView, PodView, QuotaView, WorkloadKey, WorkloadView,
};
use super::tenancy::{self, NamespaceTenancy};
use super::tokens::{self, ServingService};
use super::usage::UsageSource;
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
    /// How replica pods ask for their devices (the agent's device plugin or
    /// the vendor's).
    pub device_resources: DeviceResources,
    /// Whether a workload's namespace must be bound to its tenant.
    pub namespace_tenancy: NamespaceTenancy,
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
            device_resources: DeviceResources::default(),
            namespace_tenancy: NamespaceTenancy::default(),
        }
    }
}

/// A status this replica wrote that its reflector may not show yet.
pub(super) struct Written {
    /// resourceVersion the API server gave the write.
    pub(super) written_rv: String,
    pub(super) status: WorkloadStatus,
    pub(super) at: std::time::Instant,
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
    /// What the cached workload views were validated against.
    rules: snapshot::ValidationRules,
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
    /// What acting needs (shared with the workload reconcilers).
    act: Arc<Actuator>,
    views: std::sync::Mutex<ViewCache>,
    /// The scheduler (its engine and learned shapes carry over between
    /// passes); locked only around the pure plan, never across an await.
    scheduler: std::sync::Mutex<plan::Scheduler>,
    /// Where monthly limits read month-to-date use (none: not enforced).
    usage: Option<Arc<dyn UsageSource>>,
    month: std::sync::Mutex<MonthCache>,
    /// Token counting of InferenceServices into the ledger (none: off).
    tokens: Option<TokenCounting>,
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
    namespaces: Store<Namespace>,
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
        let act = Arc::new(Actuator::new(
            client.clone(),
            recorder,
            metrics.clone(),
            elector.leadership(),
            config.parallelism,
            config.device_resources,
        ));
        Ok(Controller {
            client,
            leadership: elector.leadership(),
            elector: Some(elector),
            scheduler: std::sync::Mutex::new(plan::Scheduler::new(config.plan.clone())),
            config,
            metrics,
            ready: Arc::new(AtomicBool::new(false)),
            act,
            views: Default::default(),
            usage: None,
            month: Default::default(),
            tokens: None,
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
        let monthly = quotas.iter().any(|q| {
            !q.spec.quota.gpu_hours_per_month.is_empty()
                || !q.spec.quota.tokens_per_month.is_empty()
        });
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
        self.act
            .set_members(Members::new(client.clone(), notify.clone()));
        let ar_tj = ApiResource::erase::<TrainingJob>(&());
        let ar_is = ApiResource::erase::<InferenceService>(&());
        let ar_tq = ApiResource::erase::<TenantQuota>(&());
        let ar_cr = ApiResource::erase::<ComputeRegion>(&());
        let w_ns = Writer::<Namespace>::new(());
        let w_nodes = Writer::<Node>::new(());
        let w_pods = Writer::<Pod>::new(());
        let w_tj = Writer::<DynamicObject>::new(ar_tj.clone());
        let w_is = Writer::<DynamicObject>::new(ar_is.clone());
        let w_tq = Writer::<DynamicObject>::new(ar_tq.clone());
        let w_cr = Writer::<DynamicObject>::new(ar_cr.clone());
        let stores = Stores {
            namespaces: w_ns.as_reader(),
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
                Api::<Namespace>::all(client.clone()),
                all(),
                w_ns,
                notify.clone(),
            ),
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
        let reconcilers = [Kind::Training, Kind::Inference].map(|kind| {
            let context = reconcile::Context {
                act: this.act.clone(),
                leadership: this.leadership.clone(),
                retry: this.retry_period(),
                resync: this.resync(),
                plan: this.config.plan.clone(),
            };
            reconcile::spawn(context, client.clone(), kind, stores.pods.clone())
        });
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
            stores.namespaces.wait_until_ready().await,
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
                    self.act.written.lock().unwrap().clear();
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
        let members = self.act.members();
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
            let rules = snapshot::ValidationRules {
                known_models: snap.known_models(),
                pod_security: snapshot::pod_security_levels(&quotas),
            };
            if rules != cache.rules {
                // Validation depends on the models and the tenants' Pod
                // Security levels: convert everything again.
                cache.training.clear();
                cache.inference.clear();
                cache.rules = rules;
            }
            let rules = &cache.rules;
            snap.workloads = cached_views(&mut cache.training, &training, |o| {
                snapshot::workload_view(Kind::Training, o, rules)
            });
            snap.workloads
                .extend(cached_views(&mut cache.inference, &inference, |o| {
                    snapshot::workload_view(Kind::Inference, o, rules)
                }));
            snapshot::key_legacy_member_placements(&mut snap.workloads, &region_views);
            snap
        };
        let namespaces = stores.namespaces.state();
        let ns_labels: HashMap<&str, &BTreeMap<String, String>> = namespaces
            .iter()
            .filter_map(|n| Some((n.metadata.name.as_deref()?, n.metadata.labels.as_ref()?)))
            .collect();
        let known_ns: std::collections::HashSet<&str> = namespaces
            .iter()
            .filter_map(|n| n.metadata.name.as_deref())
            .collect();
        let empty = BTreeMap::new();
        let default_vendors = snapshot::default_vendors(&quotas);
        for w in snap.workloads.iter_mut() {
            w.default_vendor = default_vendors.get(&w.tenant).cloned();
            let ns = w.key.namespace.as_str();
            let labels = ns_labels
                .get(ns)
                .copied()
                .or(known_ns.contains(ns).then_some(&empty));
            w.tenant_mismatch =
                tenancy::tenant_mismatch(ns, labels, &w.tenant, self.config.namespace_tenancy);
        }
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
            let mut written = self.act.written.lock().unwrap();
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
                    if let Err(e) = self.act.act(action, &obj).await {
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

    /// How often a standby retries (and the leadership poll period).
    pub(super) fn retry_period(&self) -> Duration {
        self.config.timing.retry_period
    }

    /// A pass runs at least this often.
    pub(super) fn resync(&self) -> Duration {
        self.config.resync
    }
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
    use serde_json::{json, Value};

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
