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

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DynamicObject};
use kube::{Client, ResourceExt};
use tokio::sync::{watch, Notify};

use super::act::Actuator;
use super::caches::{self, Stores};
use super::leader::{Elector, Leadership, LeaseTiming};
use super::members::Members;
use super::metering;
use super::metrics::OperatorMetrics;
use super::pods::DeviceResources;
use super::reconcile;
use super::regions::region_statuses;
use super::shared;
use super::snapshot::{self, Kind, MonthToDate, QuotaView, WorkloadKey};
use super::snapshotter::{Seen, SnapshotOptions, Snapshotter, Step};
use super::tenancy::NamespaceTenancy;
use super::tokens;
use super::triggers::{TriggerStreams, Triggers};
use super::usage::UsageSource;
use crate::ledger::Ledger;
use crate::schedule::{self as plan, Action, PlanConfig};
use crate::telemetry::tokens::{run_token_loop, TokenScrapeConfig, TokenTarget};

/// Field manager of the controller's server-side applies.
pub const FIELD_MANAGER: &str = "zhisuan-controller";

/// Settings of one controller replica.
#[derive(Clone, Debug)]
pub struct ControllerConfig {
    /// This replica's name in the Lease (pod name in a cluster).
    pub identity: String,
    /// The controller's own namespace: its Lease, and the only namespace
    /// it reads Secrets (member kubeconfigs) in.
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
    /// Step 2: builds snapshots, keeping unchanged objects' views.
    views: std::sync::Mutex<Snapshotter>,
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
    /// The current minute and the most workloads seen waiting in it, by
    /// reason (what its pending sample holds).
    pending_seen: std::sync::Mutex<(i64, BTreeMap<String, u64>)>,
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
        let recorder =
            super::events::EventRecorder::new(client.clone(), FIELD_MANAGER, &config.identity);
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
            pending_seen: std::sync::Mutex::new((i64::MIN, BTreeMap::new())),
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
        let (stores, writers) = caches::caches();
        // The reflectors wake the workload reconcilers (`triggers.rs`).
        let (triggers, woken) =
            Triggers::connected(stores.training.clone(), stores.inference.clone());
        self.act.set_members(
            Members::new(
                client.clone(),
                self.config.lease_namespace.clone(),
                notify.clone(),
            )
            .with_triggers(triggers.clone()),
        );
        let tasks = writers.spawn_reflectors(&client, &notify, &triggers);
        let elector = self.elector.take().expect("run once");
        let election = tokio::spawn(elector.run(shutdown.clone()));
        let token_loop = self.spawn_token_loop(shutdown.clone());
        let gpu_meter = self.spawn_gpu_meter(shutdown.clone());
        let voucher_loop = self.spawn_voucher_loop(shutdown.clone());
        let this = Arc::new(self);
        // The reconcilers read the loop's caches: they start once those are
        // ready (see `reconcile::spawn`).
        let mut tasks: Vec<_> = tasks
            .into_iter()
            .chain(token_loop)
            .chain(gpu_meter)
            .chain(voucher_loop)
            .collect();
        let result = match stores.wait_until_ready().await {
            Ok(()) => {
                tasks.extend(this.spawn_reconcilers(&stores, woken));
                this.schedule_loop(&stores, notify, shutdown).await
            }
            Err(e) => Err(e),
        };
        for t in tasks {
            t.abort();
        }
        let _ = election.await;
        result
    }

    /// One reconciler per workload kind, over the loop's caches (which
    /// must be ready: see `reconcile::spawn`).
    fn spawn_reconcilers(
        &self,
        stores: &Stores,
        woken: TriggerStreams,
    ) -> [tokio::task::JoinHandle<()>; 2] {
        [
            (Kind::Training, woken.training, stores.training.clone()),
            (Kind::Inference, woken.inference, stores.inference.clone()),
        ]
        .map(|(kind, woken, workloads)| {
            let context = reconcile::Context {
                act: self.act.clone(),
                leadership: self.leadership.clone(),
                retry: self.retry_period(),
                resync: self.resync(),
                plan: self.config.plan.clone(),
            };
            reconcile::spawn(context, kind, workloads, stores.pods.clone(), woken)
        })
    }

    /// Plans and acts while leading, from stores that are ready.
    async fn schedule_loop(
        &self,
        stores: &Stores,
        notify: Arc<Notify>,
        mut shutdown: watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
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

    /// One pass: observe → snapshot → plan → act, each step timed
    /// (`zhisuan_controller_pass_step_seconds{step}`; `report` is the
    /// region statuses and the plan's metrics).
    async fn pass(&self, stores: &Stores) {
        let timer = |step: &str| self.metrics.pass_seconds.with_label_values(&[step]);
        // 1. Observe: the reflectors' objects and the member clusters'.
        let t = std::time::Instant::now();
        let as_of_s = chrono::Utc::now().timestamp();
        let seen = self.observe(stores).await;
        timer("observe").observe(t.elapsed().as_secs_f64());
        // 2. Snapshot: plain data, unchanged objects' views reused; then
        //    month-to-date use and this replica's writes not yet seen.
        let t = std::time::Instant::now();
        let mut step = self
            .views
            .lock()
            .unwrap()
            .snapshot(&seen, &self.snapshot_options());
        step.snap.month_use = self.month_use(&step.snap.quotas).await;
        let overlaid = self
            .act
            .overlay_written(&mut step.snap.workloads, seen.workloads());
        // 3. What the token and GPU meters watch.
        self.publish_observations(&seen, &step, as_of_s);
        timer("snapshot").observe(t.elapsed().as_secs_f64());
        // 4. Plan (pure).
        let t = std::time::Instant::now();
        let mut plan = self
            .scheduler
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .plan(&step.snap);
        timer("plan").observe(t.elapsed().as_secs_f64());
        let t = std::time::Instant::now();
        plan.actions.extend(region_statuses(
            &seen.region_views,
            step.snap.regions.as_ref(),
            &plan.regions,
            step.snap.now,
        ));
        self.metrics.record(&plan);
        self.sample_pending(&plan.pending, step.snap.now);
        // The snapshot's views go back for the next pass to reuse.
        self.views.lock().unwrap().give_back(step, &overlaid);
        timer("report").observe(t.elapsed().as_secs_f64());
        // 5. Act.
        let t = std::time::Instant::now();
        self.act_on(plan.actions, &seen).await;
        timer("act").observe(t.elapsed().as_secs_f64());
    }

    /// Step 1: the reflectors' objects now, the member clusters synced to
    /// the ComputeRegions and their objects.
    async fn observe(&self, stores: &Stores) -> Seen {
        let regions = shared::state(&stores.regions);
        let mut region_views: Vec<snapshot::RegionView> =
            regions.iter().map(|r| snapshot::region_view(r)).collect();
        let members = self.act.members();
        members.sync(&region_views).await;
        for r in region_views.iter_mut() {
            if r.spec.kubeconfig_secret_ref.is_some() {
                r.member_problem = members.problem(&r.name);
            }
        }
        Seen {
            now: chrono::Utc::now().timestamp(),
            namespaces: stores.namespaces.state(),
            nodes: stores.nodes.state(),
            pods: shared::state(&stores.pods),
            training: shared::state(&stores.training),
            inference: shared::state(&stores.inference),
            quotas: shared::state(&stores.quotas),
            regions,
            region_views,
            members: members.objects(),
        }
    }

    fn snapshot_options(&self) -> SnapshotOptions {
        SnapshotOptions {
            region_scoring: self.config.plan.region_scoring,
            namespace_tenancy: self.config.namespace_tenancy,
            services: self.tokens.is_some(),
            energy: self.metering.is_some(),
        }
    }

    /// Step 3: the token loop's scrape targets (sent only when they
    /// changed) and the GPU meter's runs, stamped with when the pass began
    /// to observe.
    fn publish_observations(&self, seen: &Seen, step: &Step, as_of_s: i64) {
        let snap = &step.snap;
        if let Some(counting) = &self.tokens {
            let pods: Vec<_> = seen
                .pods
                .iter()
                .filter_map(|p| tokens::serving_pod(p))
                .collect();
            let node_regions: BTreeMap<String, String> = snap
                .nodes
                .iter()
                .map(|n| (n.name.clone(), n.region.clone()))
                .collect();
            let targets = tokens::token_targets(&step.services, &pods, &node_regions);
            publish_if_changed(&counting.targets, targets);
        }
        if let Some(m) = &self.metering {
            let index = metering::MeterIndex::new(&snap.nodes, &snap.workloads, &seen.region_views);
            let member_pods: Vec<(&str, &[Arc<Pod>])> = seen
                .members
                .iter()
                .map(|m| (m.region.as_str(), m.pods.as_slice()))
                .collect();
            let mut observed = metering::observe(&index, &seen.pods, &member_pods);
            observed.energy = step.node_energy.clone();
            observed.as_of_s = Some(as_of_s);
            publish_if_changed(&m.observed, observed);
        }
    }

    /// Step 4b: the workloads waiting (by reason) into the metering
    /// ledger for the operator page's "pending over time"
    /// (`ledger::pending`): at the first pass of each minute, and again
    /// whenever a reason's count passes the most seen this minute (so the
    /// minute's sample is its peak). Written off the async workers and
    /// never waited for; a failed write is logged.
    fn sample_pending(&self, pending: &BTreeMap<String, u64>, now_s: i64) {
        let Some(m) = &self.metering else {
            return;
        };
        let minute = now_s.div_euclid(crate::ledger::pending::SAMPLE_S);
        let sample = {
            let mut seen = self.pending_seen.lock().unwrap();
            let fresh = seen.0 != minute;
            if fresh {
                *seen = (minute, pending.clone());
            }
            let mut grew = false;
            for (reason, n) in pending {
                let most = seen.1.entry(reason.clone()).or_default();
                if *n > *most {
                    *most = *n;
                    grew = true;
                }
            }
            (fresh || grew).then(|| seen.1.clone())
        };
        let Some(sample) = sample else {
            return;
        };
        let ledger = m.ledger.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = ledger.record_pending(now_s, &sample) {
                tracing::warn!(error = %e, "pending sample not recorded");
            }
        });
    }

    /// Step 5: each action on its object, concurrently (actions touch
    /// distinct objects), bounded, each only while this replica leads.
    async fn act_on(&self, actions: Vec<Action>, seen: &Seen) {
        let by_name = |objs: &[Arc<DynamicObject>]| -> BTreeMap<String, Arc<DynamicObject>> {
            objs.iter().map(|o| (o.name_any(), o.clone())).collect()
        };
        // Only the workloads the actions name are looked up (a pass with
        // a few actions among 37k workloads made a key of each before).
        let names: HashSet<&str> = actions
            .iter()
            .filter_map(|a| match a {
                Action::SetStatus { key, .. }
                | Action::Launch { key, .. }
                | Action::Stop { key, .. } => Some(key.name.as_str()),
                Action::QuotaStatus { .. } | Action::RegionStatus { .. } => None,
            })
            .collect();
        let workloads: HashMap<WorkloadKey, Arc<DynamicObject>> = seen
            .training
            .iter()
            .map(|o| (Kind::Training, o))
            .chain(seen.inference.iter().map(|o| (Kind::Inference, o)))
            .filter(|(_, o)| {
                o.metadata
                    .name
                    .as_deref()
                    .is_some_and(|n| names.contains(n))
            })
            .map(|(kind, o)| (snapshot::workload_key(kind, o), o.clone()))
            .collect();
        let quota_objects = by_name(&seen.quotas);
        let region_objects = by_name(&seen.regions);
        let mut work = Vec::with_capacity(actions.len());
        for action in actions {
            let obj = match &action {
                Action::SetStatus { key: k, .. }
                | Action::Launch { key: k, .. }
                | Action::Stop { key: k, .. } => workloads.get(k).cloned(),
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
