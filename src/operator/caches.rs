//! The controller's caches: one reflector store a watched resource, filled
//! by reflectors that wake the scheduling loop on every event.

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::reflector::{self, store::Writer, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Client;
use tokio::sync::Notify;

use super::crd::{ComputeRegion, InferenceService, TenantQuota, TrainingJob};
use super::shared::Shared;
use super::snapshot::Kind;
use super::triggers::Triggers;

/// The reflector stores the controller reads its snapshots from.
pub(super) struct Stores {
    pub(super) namespaces: Store<Namespace>,
    pub(super) nodes: Store<Node>,
    pub(super) pods: Store<Shared<Pod>>,
    pub(super) training: Store<Shared<DynamicObject>>,
    pub(super) inference: Store<Shared<DynamicObject>>,
    pub(super) quotas: Store<Shared<DynamicObject>>,
    pub(super) regions: Store<Shared<DynamicObject>>,
}

impl Stores {
    /// Once every reflector has listed. The only wait for their readiness:
    /// kube-runtime wakes only a store's last waiter (`reconcile::spawn`).
    pub(super) async fn wait_until_ready(&self) -> anyhow::Result<()> {
        for ready in [
            self.namespaces.wait_until_ready().await,
            self.nodes.wait_until_ready().await,
            self.pods.wait_until_ready().await,
            self.training.wait_until_ready().await,
            self.inference.wait_until_ready().await,
            self.quotas.wait_until_ready().await,
            self.regions.wait_until_ready().await,
        ] {
            ready.map_err(|e| anyhow::anyhow!("reflector ended before listing: {e}"))?;
        }
        Ok(())
    }
}

/// A reflector with watch settings (e.g. a label selector), waking `notify` on
/// every event; `on_event` sees each event once the cache holds it.
pub(super) fn spawn_reflector<K>(
    api: Api<K>,
    config: watcher::Config,
    writer: Writer<K>,
    notify: Arc<Notify>,
    mut on_event: impl FnMut(&watcher::Event<K>) + Send + 'static,
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
            match ev {
                Ok(event) => on_event(&event),
                Err(e) => tracing::warn!(error = %e, "watch error (retrying with backoff)"),
            }
            notify.notify_one();
        }
    })
}

/// What a custom resource's reflector does with each event besides caching it.
type OnEvent = Box<dyn FnMut(&watcher::Event<Shared<DynamicObject>>) + Send>;

/// The writing ends of the [`Stores`], each with what its reflector watches.
pub(super) struct Writers {
    namespaces: Writer<Namespace>,
    nodes: Writer<Node>,
    pods: Writer<Shared<Pod>>,
    training: (Writer<Shared<DynamicObject>>, ApiResource),
    inference: (Writer<Shared<DynamicObject>>, ApiResource),
    quotas: (Writer<Shared<DynamicObject>>, ApiResource),
    regions: (Writer<Shared<DynamicObject>>, ApiResource),
}

/// Empty stores and their writers.
pub(super) fn caches() -> (Stores, Writers) {
    let custom = |ar: ApiResource| (Writer::<Shared<DynamicObject>>::new(ar.clone()), ar);
    let w = Writers {
        namespaces: Writer::<Namespace>::new(()),
        nodes: Writer::<Node>::new(()),
        pods: Writer::<Shared<Pod>>::new(()),
        training: custom(ApiResource::erase::<TrainingJob>(&())),
        inference: custom(ApiResource::erase::<InferenceService>(&())),
        quotas: custom(ApiResource::erase::<TenantQuota>(&())),
        regions: custom(ApiResource::erase::<ComputeRegion>(&())),
    };
    let stores = Stores {
        namespaces: w.namespaces.as_reader(),
        nodes: w.nodes.as_reader(),
        pods: w.pods.as_reader(),
        training: w.training.0.as_reader(),
        inference: w.inference.0.as_reader(),
        quotas: w.quotas.0.as_reader(),
        regions: w.regions.0.as_reader(),
    };
    (stores, w)
}

impl Writers {
    /// A reflector a store, each waking `notify`; pods and workloads also
    /// wake their workloads' reconcilers through `triggers`.
    pub(super) fn spawn_reflectors(
        self,
        client: &Client,
        notify: &Arc<Notify>,
        triggers: &Triggers,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let all = watcher::Config::default;
        let custom = |(writer, ar): (Writer<Shared<DynamicObject>>, ApiResource),
                      on_event: OnEvent| {
            spawn_reflector(
                Api::<Shared<DynamicObject>>::all_with(client.clone(), &ar),
                all(),
                writer,
                notify.clone(),
                on_event,
            )
        };
        vec![
            spawn_reflector(
                Api::<Namespace>::all(client.clone()),
                all(),
                self.namespaces,
                notify.clone(),
                |_| {},
            ),
            spawn_reflector(
                Api::<Node>::all(client.clone()),
                all(),
                self.nodes,
                notify.clone(),
                |_| {},
            ),
            spawn_reflector(
                Api::<Shared<Pod>>::all(client.clone()),
                all(),
                self.pods,
                notify.clone(),
                triggers.for_pods(),
            ),
            custom(
                self.training,
                Box::new(triggers.for_workloads(Kind::Training)),
            ),
            custom(
                self.inference,
                Box::new(triggers.for_workloads(Kind::Inference)),
            ),
            custom(self.quotas, Box::new(|_| {})),
            custom(self.regions, Box::new(|_| {})),
        ]
    }
}
