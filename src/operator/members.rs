//! Member clusters: ComputeRegions whose nodes are in another Kubernetes
//! cluster (`spec.kubeconfigSecretRef`). The per-cluster I/O lives here:
//! the kubeconfig is read from a Secret in the home cluster, a client is
//! built from it (cached per Secret resourceVersion), and that cluster's
//! nodes (the region's `nodeSelector` applied there) and pods are mirrored
//! by reflectors. The controller feeds them into the same snapshot and plan
//! as the home cluster's (member nodes carry the synthetic label
//! [`keys::MEMBER_CLUSTER`] naming their region) and creates, binds and
//! deletes the pods of workloads placed there through [`Members::pod_api`].
//! The kubeconfig's contents are never logged nor put in a status.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Pod, Secret};
use kube::api::Api;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::reflector::{store::Writer, ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Client, Config};
use tokio::sync::Notify;

use super::crd::SecretKeyRef;
use super::shared::{self, Shared};
use super::snapshot::{self, keys, NodeView, PodView, RegionView};
use super::triggers::Triggers;

/// A member's Secret is read again at most this often (a changed
/// resourceVersion builds a new client).
const SECRET_RECHECK: Duration = Duration::from_secs(10);

/// Reason of a region whose Secret or kubeconfig cannot be used.
pub const REASON_SECRET: &str = "KubeconfigSecretUnusable";
/// Reason of a region whose member cluster has not been listed yet.
pub const REASON_SYNCING: &str = "MemberClusterSyncing";

/// A region's Secret (namespace, name, key) and node selector.
type Wanted = ((String, String, String), BTreeMap<String, String>);

/// The regions with a member cluster (valid specs only): where each one's
/// kubeconfig is, and its node selector.
fn wanted(regions: &[RegionView]) -> BTreeMap<String, Wanted> {
    regions
        .iter()
        .filter(|r| r.errors.is_empty())
        .filter_map(|r| {
            let s = r.spec.kubeconfig_secret_ref.as_ref()?;
            Some((
                r.name.clone(),
                (secret_location(s), r.spec.node_selector.clone()),
            ))
        })
        .collect()
}

/// Where a region's kubeconfig is: namespace, name, key.
fn secret_location(r: &SecretKeyRef) -> (String, String, String) {
    let key = r
        .key
        .clone()
        .filter(|k| !k.is_empty())
        .unwrap_or_else(|| "kubeconfig".into());
    (r.namespace.clone(), r.name.clone(), key)
}

/// One connected member cluster.
struct Cluster {
    secret_rv: String,
    client: Client,
    nodes: Store<Node>,
    pods: Store<Shared<Pod>>,
    /// Both reflectors have listed.
    ready: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

struct Member {
    secret: (String, String, String),
    selector: BTreeMap<String, String>,
    checked_at: Instant,
    /// Connected cluster, or why not (reason, message).
    state: Result<Cluster, (String, String)>,
}

/// The member clusters of the ComputeRegions, by region name.
pub struct Members {
    home: Client,
    /// The controller's own namespace: the only one it reads Secrets in.
    namespace: String,
    notify: Arc<Notify>,
    /// Wakes the workload reconcilers on a member's pod changes.
    triggers: Triggers,
    regions: Mutex<BTreeMap<String, Member>>,
    /// A first [`Members::sync`] has run: which regions are members is known.
    synced: AtomicBool,
}

/// One listed member cluster's nodes and pods.
pub struct MemberObjects {
    pub region: String,
    pub nodes: Vec<Arc<Node>>,
    pub pods: Vec<Arc<Pod>>,
}

/// A member cluster's node as the planner sees it: named
/// [`snapshot::member_node_key`] (`<region>/<node>`: node names need not be
/// unique across clusters) and labelled [`keys::MEMBER_CLUSTER`] = region.
pub fn member_node_view(region: &str, node: &Node) -> NodeView {
    let mut v = snapshot::node_view(node);
    v.name = snapshot::member_node_key(region, &v.name);
    v.labels
        .push((keys::MEMBER_CLUSTER.to_string(), region.to_string()));
    v
}

/// A member cluster's pod as the planner sees it: its node named as in
/// [`member_node_view`].
pub fn member_pod_view(region: &str, pod: &Pod) -> PodView {
    let mut v = snapshot::pod_view(pod);
    if let Some(node) = v.node.as_mut() {
        *node = snapshot::member_node_key(region, node);
    }
    v
}

/// The cluster that holds a workload's pods.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PodsIn {
    /// The home cluster (the controller's own).
    Home,
    /// The member cluster of this region.
    Member(String),
    /// Not known (a placement that recorded no region): the home cluster
    /// and every connected member.
    Everywhere,
}

/// Builds a client from kubeconfig text. Errors never quote the text.
async fn client_from(text: &str) -> Result<Client, String> {
    let kubeconfig =
        Kubeconfig::from_yaml(text).map_err(|_| "is not a parseable kubeconfig".to_string())?;
    // A kubeconfig from a Secret must not make the controller run commands.
    if kubeconfig.auth_infos.iter().any(|a| {
        a.auth_info
            .as_ref()
            .is_some_and(|i| i.exec.is_some() || i.auth_provider.is_some())
    }) {
        return Err("uses an exec or auth-provider user, which is not allowed".into());
    }
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(|e| format!("is not a usable kubeconfig ({})", error_kind(&e)))?;
    Client::try_from(config).map_err(|_| "gives no usable client configuration".to_string())
}

/// The variant of a kubeconfig error, without any of its payload.
fn error_kind(e: &kube::config::KubeconfigError) -> String {
    let d = format!("{e:?}");
    d.split(['(', ' ', '{'])
        .next()
        .unwrap_or("error")
        .to_string()
}

impl Members {
    /// Member clusters whose kubeconfig Secrets live in `namespace` (the
    /// controller's own; a Secret elsewhere is refused unread).
    pub fn new(home: Client, namespace: String, notify: Arc<Notify>) -> Self {
        Members {
            home,
            namespace,
            notify,
            triggers: Triggers::default(),
            regions: Mutex::new(BTreeMap::new()),
            synced: AtomicBool::new(false),
        }
    }

    /// Member pods' changes wake the workload reconcilers through `triggers`.
    pub(super) fn with_triggers(mut self, triggers: Triggers) -> Self {
        self.triggers = triggers;
        self
    }

    /// Brings the member clusters in line with the regions: connects new
    /// ones, re-reads Secrets every [`SECRET_RECHECK`], drops the rest.
    pub async fn sync(&self, regions: &[RegionView]) {
        let wanted = wanted(regions);
        for name in self.due(&wanted) {
            let (secret, selector) = wanted[&name].clone();
            // None: the connection held is kept as it is.
            let Some(state) = self.read_member(&name, &secret, &selector).await else {
                continue;
            };
            let state = state.map_err(|message| {
                tracing::warn!(region = %name, %message, "member cluster unusable");
                (REASON_SECRET.to_string(), message)
            });
            if state.is_ok() {
                tracing::info!(region = %name, "member cluster connected");
            }
            self.regions.lock().unwrap().insert(
                name,
                Member {
                    secret,
                    selector,
                    checked_at: Instant::now(),
                    state,
                },
            );
        }
        self.synced.store(true, Ordering::SeqCst);
    }

    /// Forgets the regions no longer wanted; the wanted regions whose
    /// Secret reference or node selector changed, that are new, or whose
    /// Secret is due a recheck.
    fn due(&self, wanted: &BTreeMap<String, Wanted>) -> Vec<String> {
        let mut members = self.regions.lock().unwrap();
        members.retain(|name, _| wanted.contains_key(name));
        wanted
            .iter()
            .filter(|(name, (secret, selector))| match members.get(*name) {
                Some(m) => {
                    m.secret != *secret
                        || m.selector != *selector
                        || m.checked_at.elapsed() >= SECRET_RECHECK
                }
                None => true,
            })
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Reads a member region's kubeconfig Secret and connects to its
    /// cluster, or says why not. `None` when the connection held stays:
    /// the Secret is unchanged, or reading it failed while a connection
    /// works.
    async fn read_member(
        &self,
        name: &str,
        secret: &(String, String, String),
        selector: &BTreeMap<String, String>,
    ) -> Option<Result<Cluster, String>> {
        let (ns, sname, key) = secret;
        let described = format!("Secret {ns}/{sname} key {key:?} (spec.kubeconfigSecretRef)");
        // Secrets are read in the controller's own namespace only
        // (the chart grants no other).
        let read = match *ns == self.namespace {
            true => Some(
                Api::<Secret>::namespaced(self.home.clone(), ns)
                    .get_opt(sname)
                    .await,
            ),
            false => None,
        };
        let current_rv = {
            let members = self.regions.lock().unwrap();
            members.get(name).and_then(|m| match &m.state {
                Ok(c) if m.secret == *secret && m.selector == *selector => {
                    Some(c.secret_rv.clone())
                }
                _ => None,
            })
        };
        Some(match read {
            None => Err(format!(
                "{described}: the controller reads Secrets only in its own namespace {own:?}; create the Secret there and set spec.kubeconfigSecretRef.namespace to {own:?}",
                own = self.namespace
            )),
            Some(Err(e)) => {
                if current_rv.is_some() {
                    // Keep the working connection over a failed read.
                    tracing::warn!(region = %name, error = %e, "reading the member-cluster Secret failed; keeping the connection");
                    self.touch(name);
                    return None;
                }
                Err(format!("{described}: cannot be read: {e}"))
            }
            Some(Ok(None)) => Err(format!("{described}: the Secret does not exist")),
            Some(Ok(Some(s))) => {
                let rv = s.metadata.resource_version.clone().unwrap_or_default();
                if current_rv.as_deref() == Some(rv.as_str()) && !rv.is_empty() {
                    self.touch(name);
                    return None;
                }
                match s.data.as_ref().and_then(|d| d.get(key)) {
                    None => Err(format!("{described}: the Secret has no such key")),
                    Some(bytes) => match std::str::from_utf8(&bytes.0) {
                        Err(_) => Err(format!("{described}: the value is not UTF-8")),
                        Ok(text) => match client_from(text).await {
                            Err(why) => Err(format!("{described}: the value {why}")),
                            Ok(client) => Ok(self.connect(name, rv, client, selector)),
                        },
                    },
                }
            }
        })
    }

    fn touch(&self, name: &str) {
        if let Some(m) = self.regions.lock().unwrap().get_mut(name) {
            m.checked_at = Instant::now();
        }
    }

    /// Starts the node and pod reflectors of a member cluster.
    fn connect(
        &self,
        region: &str,
        secret_rv: String,
        client: Client,
        selector: &BTreeMap<String, String>,
    ) -> Cluster {
        let w_nodes = Writer::<Node>::new(());
        let w_pods = Writer::<Shared<Pod>>::new(());
        let (nodes, pods) = (w_nodes.as_reader(), w_pods.as_reader());
        let labels: Vec<String> = selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let node_watch = watcher::Config::default().labels(&labels.join(","));
        let pod_watch = watcher::Config::default();
        let ready = Arc::new(AtomicBool::new(false));
        let mut tasks = vec![
            super::caches::spawn_reflector(
                Api::<Node>::all(client.clone()),
                node_watch,
                w_nodes,
                self.notify.clone(),
                |_| {},
            ),
            super::caches::spawn_reflector(
                Api::<Shared<Pod>>::all(client.clone()),
                pod_watch,
                w_pods,
                self.notify.clone(),
                self.triggers.for_pods(),
            ),
        ];
        {
            let (nodes, pods, ready, notify) = (
                nodes.clone(),
                pods.clone(),
                ready.clone(),
                self.notify.clone(),
            );
            let region = region.to_string();
            tasks.push(tokio::spawn(async move {
                if nodes.wait_until_ready().await.is_ok() && pods.wait_until_ready().await.is_ok() {
                    tracing::info!(%region, "member cluster listed");
                    ready.store(true, Ordering::SeqCst);
                    notify.notify_one();
                }
            }));
        }
        Cluster {
            secret_rv,
            client,
            nodes,
            pods,
            ready,
            tasks,
        }
    }

    /// Why a member region cannot be used now (reason, message); `None`
    /// when its cluster is connected and listed.
    pub fn problem(&self, region: &str) -> Option<(String, String)> {
        let members = self.regions.lock().unwrap();
        match members.get(region).map(|m| &m.state) {
            None => Some((
                REASON_SYNCING.into(),
                "the member cluster is not connected yet".into(),
            )),
            Some(Err(p)) => Some(p.clone()),
            Some(Ok(c)) if !c.ready.load(Ordering::SeqCst) => Some((
                REASON_SYNCING.into(),
                "the member cluster's nodes and pods are being listed".into(),
            )),
            Some(Ok(_)) => None,
        }
    }

    /// The nodes and pods of every listed member cluster (cheap: the
    /// caches' `Arc`s; converted to views outside the lock, through the
    /// controller's view cache, by [`member_node_view`] / [`member_pod_view`]).
    pub fn objects(&self) -> Vec<MemberObjects> {
        let members = self.regions.lock().unwrap();
        members
            .iter()
            .filter_map(|(region, m)| {
                let c = m.state.as_ref().ok()?;
                c.ready.load(Ordering::SeqCst).then(|| MemberObjects {
                    region: region.clone(),
                    nodes: c.nodes.state(),
                    pods: shared::state(&c.pods),
                })
            })
            .collect()
    }

    /// The pods API of a member region's cluster (`None`: the region is not
    /// a connected member).
    pub fn pod_api(&self, region: &str, namespace: &str) -> Option<Api<Pod>> {
        let members = self.regions.lock().unwrap();
        match &members.get(region)?.state {
            Ok(c) => Some(Api::namespaced(c.client.clone(), namespace)),
            Err(_) => None,
        }
    }

    /// Whether `region` is a member region (connected or not).
    pub fn is_member(&self, region: &str) -> bool {
        self.regions.lock().unwrap().contains_key(region)
    }

    /// The cluster holding the pods of a placement in `region`: a member
    /// region's own; the home cluster for any other region; both kinds for a
    /// placement without a region. Err before the first [`Members::sync`]
    /// (which regions are members is not known yet).
    pub fn cluster_of(&self, region: Option<&str>) -> Result<PodsIn, String> {
        let Some(region) = region else {
            return Ok(PodsIn::Everywhere);
        };
        if !self.synced.load(Ordering::SeqCst) {
            return Err("the member clusters are not known yet".into());
        }
        Ok(if self.is_member(region) {
            PodsIn::Member(region.to_string())
        } else {
            PodsIn::Home
        })
    }

    /// The pods APIs of `at`. Err: a member cluster that is not connected
    /// (its pods cannot be reached now; retry later).
    pub fn pod_apis(&self, at: &PodsIn, namespace: &str) -> Result<Vec<Api<Pod>>, String> {
        let home = || Api::namespaced(self.home.clone(), namespace);
        match at {
            PodsIn::Home => Ok(vec![home()]),
            PodsIn::Member(region) => self
                .pod_api(region, namespace)
                .map(|api| vec![api])
                .ok_or_else(|| format!("the member cluster of region {region} is not connected")),
            PodsIn::Everywhere => {
                let members = self.regions.lock().unwrap();
                Ok(std::iter::once(home())
                    .chain(
                        members
                            .values()
                            .filter_map(|m| m.state.as_ref().ok())
                            .map(|c| Api::namespaced(c.client.clone(), namespace)),
                    )
                    .collect())
            }
        }
    }

    /// A pod of a member region's cluster, from its reflector's cache. Err:
    /// that cluster is not connected and listed (its cache says nothing).
    pub fn cached_pod(
        &self,
        region: &str,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Arc<Pod>>, String> {
        let members = self.regions.lock().unwrap();
        match members.get(region).map(|m| &m.state) {
            Some(Ok(c)) if c.ready.load(Ordering::SeqCst) => Ok(shared::get(
                &c.pods,
                &ObjectRef::new(name).within(namespace),
            )),
            _ => Err(format!(
                "the member cluster of region {region} is not listed"
            )),
        }
    }

    /// A pod of any connected member cluster, from the caches.
    pub fn cached_pod_anywhere(&self, namespace: &str, name: &str) -> Option<Arc<Pod>> {
        let members = self.regions.lock().unwrap();
        members
            .values()
            .filter_map(|m| m.state.as_ref().ok())
            .find_map(|c| shared::get(&c.pods, &ObjectRef::new(name).within(namespace)))
    }

    /// Pods of member clusters matching `pred`, from the caches, each with
    /// its member region.
    pub fn cached_pods(&self, pred: impl Fn(&Pod) -> bool) -> Vec<(String, Arc<Pod>)> {
        let members = self.regions.lock().unwrap();
        members
            .iter()
            .filter_map(|(region, m)| Some((region, m.state.as_ref().ok()?)))
            .flat_map(|(region, c)| {
                shared::state_filter(&c.pods, &pred)
                    .into_iter()
                    .map(|p| (region.clone(), p))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bad_kubeconfigs_are_refused_without_quoting_them() {
        let secret_text = "token-s3cr3t: [unclosed";
        let why = client_from(secret_text).await.err().unwrap();
        assert!(!why.contains("s3cr3t"), "{why}");
        let exec = "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: http://127.0.0.1:1\n\
                    contexts:\n- name: c\n  context:\n    cluster: c\n    user: u\ncurrent-context: c\n\
                    users:\n- name: u\n  user:\n    exec:\n      apiVersion: client.authentication.k8s.io/v1\n      command: s3cr3t-helper\n";
        let why = client_from(exec).await.err().unwrap();
        assert!(why.contains("exec"), "{why}");
        assert!(!why.contains("s3cr3t"), "{why}");
        let ok = "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: http://127.0.0.1:1\n\
                  contexts:\n- name: c\n  context:\n    cluster: c\n    user: u\ncurrent-context: c\n\
                  users:\n- name: u\n  user: {}\n";
        assert!(client_from(ok).await.is_ok());
    }

    #[tokio::test]
    async fn pods_are_placed_nowhere_until_the_members_are_known() {
        let config = Config::new("http://127.0.0.1:1".parse().unwrap());
        let members = Members::new(
            Client::try_from(config).unwrap(),
            "zhisuan".into(),
            Arc::new(Notify::new()),
        );
        // Before the first sync a region may be a member: no guess.
        assert!(members.cluster_of(Some("far")).is_err());
        assert_eq!(members.cluster_of(None), Ok(PodsIn::Everywhere));
        members.sync(&[]).await;
        assert_eq!(members.cluster_of(Some("far")), Ok(PodsIn::Home));
        // A member cluster that is not connected can be neither read nor written.
        let far = PodsIn::Member("far".into());
        assert!(members.pod_apis(&far, "ml").is_err());
        assert!(members.cached_pod("far", "ml", "p-0").is_err());
        assert_eq!(
            members.pod_apis(&PodsIn::Everywhere, "ml").unwrap().len(),
            1
        );
    }

    #[test]
    fn the_key_defaults_to_kubeconfig() {
        let r = SecretKeyRef {
            name: "kc".into(),
            namespace: "zhisuan".into(),
            key: None,
        };
        assert_eq!(secret_location(&r).2, "kubeconfig");
    }
}
