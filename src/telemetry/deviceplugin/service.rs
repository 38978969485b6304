//! The gRPC side of the plugin: the `DevicePlugin` service for one resource,
//! and the kubelet pod-resources client it asks who holds which ids.

use super::plan::{self, Held, NodeDevices, Resource};
use super::pods::PodSource;
use super::proto::podresources::pod_resources_lister_client::PodResourcesListerClient;
use super::proto::podresources::ListPodResourcesRequest;
use super::proto::v1beta1 as api;
use super::proto::v1beta1::device_plugin_server::DevicePlugin;
use futures::Stream;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::{Request, Response, Status};

/// What both resources' services share.
pub struct PluginState {
    /// The node's devices and their health, updated by the sampler.
    pub devices: watch::Receiver<Arc<NodeDevices>>,
    /// The pods bound to this node.
    pub pods: PodSource,
    /// The kubelet's pod-resources socket.
    pub pod_resources: PathBuf,
}

/// The `DevicePlugin` service for one resource.
pub struct Plugin {
    pub resource: Resource,
    pub state: Arc<PluginState>,
}

/// A gRPC channel over a unix socket.
pub async fn uds_channel(path: &Path) -> Result<Channel, tonic::transport::Error> {
    let path = path.to_path_buf();
    Endpoint::from_static("http://localhost")
        .connect_timeout(Duration::from_secs(2))
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                tokio::net::UnixStream::connect(path)
                    .await
                    .map(hyper_util::rt::TokioIo::new)
            }
        }))
        .await
}

/// `(namespace, name, ids)` of every container holding ids of `resource`,
/// per the kubelet. Err when the kubelet cannot be asked.
pub async fn held_ids(
    socket: &Path,
    resource: Resource,
) -> Result<Vec<(Held, Vec<String>)>, String> {
    let ask = async {
        let channel = uds_channel(socket).await.map_err(|e| e.to_string())?;
        PodResourcesListerClient::new(channel)
            .list(ListPodResourcesRequest {})
            .await
            .map_err(|e| e.message().to_string())
    };
    let listed = tokio::time::timeout(Duration::from_secs(2), ask)
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| format!("pod-resources at {}: {e}", socket.display()))?;
    let mut out = Vec::new();
    for p in listed.into_inner().pod_resources {
        for c in p.containers {
            for d in c.devices {
                if d.resource_name == resource.name() && !d.device_ids.is_empty() {
                    out.push(((p.namespace.clone(), p.name.clone()), d.device_ids));
                }
            }
        }
    }
    Ok(out)
}

impl Plugin {
    fn node(&self) -> Arc<NodeDevices> {
        self.state.devices.borrow().clone()
    }

    /// Pods that already hold ids of this resource (empty, logged, when the
    /// kubelet cannot be asked: matching by devices still holds).
    async fn held(&self) -> Vec<Held> {
        match held_ids(&self.state.pod_resources, self.resource).await {
            Ok(h) => h.into_iter().map(|(pod, _)| pod).collect(),
            Err(e) => {
                tracing::warn!(error = %e, "device plugin: cannot list allocated pods");
                Vec::new()
            }
        }
    }

    fn list(&self, node: &NodeDevices) -> api::ListAndWatchResponse {
        api::ListAndWatchResponse {
            devices: node
                .advertised(self.resource)
                .into_iter()
                .map(|(id, healthy)| api::Device {
                    id,
                    health: if healthy { "Healthy" } else { "Unhealthy" }.into(),
                    topology: None,
                })
                .collect(),
        }
    }
}

fn to_response(a: plan::Answer) -> api::ContainerAllocateResponse {
    api::ContainerAllocateResponse {
        envs: a.envs.into_iter().collect(),
        mounts: Vec::new(),
        devices: a
            .device_nodes
            .into_iter()
            .map(|d| api::DeviceSpec {
                container_path: d.container_path,
                host_path: d.host_path,
                permissions: d.permissions,
            })
            .collect(),
        annotations: a.annotations.into_iter().collect(),
        cdi_devices: Vec::new(),
    }
}

type ListStream = Pin<Box<dyn Stream<Item = Result<api::ListAndWatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl DevicePlugin for Plugin {
    async fn get_device_plugin_options(
        &self,
        _: Request<api::Empty>,
    ) -> Result<Response<api::DevicePluginOptions>, Status> {
        Ok(Response::new(options()))
    }

    type ListAndWatchStream = ListStream;

    async fn list_and_watch(
        &self,
        _: Request<api::Empty>,
    ) -> Result<Response<Self::ListAndWatchStream>, Status> {
        let plugin = Plugin {
            resource: self.resource,
            state: self.state.clone(),
        };
        let updates = tokio_stream::wrappers::WatchStream::new(self.state.devices.clone());
        let mut last: Option<api::ListAndWatchResponse> = None;
        let stream = futures::StreamExt::filter_map(updates, move |node| {
            let list = plugin.list(&node);
            let changed = last.as_ref() != Some(&list);
            last = Some(list.clone());
            async move { changed.then_some(Ok(list)) }
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_preferred_allocation(
        &self,
        req: Request<api::PreferredAllocationRequest>,
    ) -> Result<Response<api::PreferredAllocationResponse>, Status> {
        let node = self.node();
        let pods = (self.state.pods)();
        let held = self.held().await;
        let container_responses = req
            .into_inner()
            .container_requests
            .into_iter()
            .map(|c| api::ContainerPreferredAllocationResponse {
                device_i_ds: plan::prefer(
                    &node,
                    &pods,
                    &held,
                    self.resource,
                    &c.available_device_i_ds,
                    &c.must_include_device_i_ds,
                    usize::try_from(c.allocation_size).unwrap_or(0),
                ),
            })
            .collect();
        Ok(Response::new(api::PreferredAllocationResponse {
            container_responses,
        }))
    }

    async fn allocate(
        &self,
        req: Request<api::AllocateRequest>,
    ) -> Result<Response<api::AllocateResponse>, Status> {
        let node = self.node();
        let pods = (self.state.pods)();
        let held = self.held().await;
        let mut container_responses = Vec::new();
        for c in req.into_inner().container_requests {
            match plan::allocate(&node, &pods, &held, self.resource, &c.devices_ids) {
                Ok(a) => {
                    tracing::info!(pod = %a.pod, resource = self.resource.name(), ids = ?c.devices_ids, "allocated");
                    container_responses.push(to_response(a));
                }
                Err(e) => {
                    tracing::warn!(resource = self.resource.name(), "allocate refused: {e}");
                    return Err(Status::failed_precondition(e));
                }
            }
        }
        Ok(Response::new(api::AllocateResponse {
            container_responses,
        }))
    }

    async fn pre_start_container(
        &self,
        req: Request<api::PreStartContainerRequest>,
    ) -> Result<Response<api::PreStartContainerResponse>, Status> {
        let ids = req.into_inner().devices_ids;
        let owner = match held_ids(&self.state.pod_resources, self.resource).await {
            Ok(held) => held
                .into_iter()
                .find(|(_, held)| ids.iter().all(|i| held.contains(i)))
                .map(|(pod, _)| pod),
            Err(e) => {
                tracing::warn!(error = %e, "device plugin: cannot check who holds {ids:?}");
                None
            }
        };
        let node = self.node();
        let pods = (self.state.pods)();
        plan::check_start(&node, &pods, self.resource, &ids, owner.as_ref())
            .map_err(Status::failed_precondition)?;
        Ok(Response::new(api::PreStartContainerResponse {}))
    }
}

/// The options both resources register with.
pub fn options() -> api::DevicePluginOptions {
    api::DevicePluginOptions {
        pre_start_required: true,
        get_preferred_allocation_available: true,
    }
}
