//! Serving each resource on its socket and registering it with the kubelet;
//! again whenever the kubelet restarts (it recreates `kubelet.sock` and wipes
//! the plugins' sockets).

use super::plan::Resource;
use super::proto::v1beta1::device_plugin_server::DevicePluginServer;
use super::proto::v1beta1::registration_client::RegistrationClient;
use super::proto::v1beta1::RegisterRequest;
use super::service::{options, uds_channel, Plugin, PluginState};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// The kubelet's registration socket in the device-plugin directory.
pub const KUBELET_SOCKET: &str = "kubelet.sock";
/// The protocol version zhisuan speaks.
pub const VERSION: &str = "v1beta1";

/// The socket file (in the device-plugin directory) serving `resource`.
pub fn endpoint(resource: Resource) -> &'static str {
    match resource {
        Resource::Whole => "zhisuan-gpu.sock",
        Resource::Share => "zhisuan-gpu-share.sock",
    }
}

/// How often the sockets are checked for a kubelet restart.
const CHECK: Duration = Duration::from_millis(500);

/// Identity of a file: (device, inode, change time); None when missing.
fn identity(path: &Path) -> Option<(u64, u64, i64, i64)> {
    std::fs::metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino(), m.ctime(), m.ctime_nsec()))
}

/// Serves both resources in `dir` until `stop` turns true, registering each
/// with the kubelet and re-registering after a kubelet restart.
pub async fn run(dir: PathBuf, state: Arc<PluginState>, stop: watch::Receiver<bool>) {
    let tasks: Vec<_> = [Resource::Whole, Resource::Share]
        .into_iter()
        .map(|r| tokio::spawn(serve_resource(dir.clone(), r, state.clone(), stop.clone())))
        .collect();
    for t in tasks {
        let _ = t.await;
    }
}

async fn serve_resource(
    dir: PathBuf,
    resource: Resource,
    state: Arc<PluginState>,
    mut stop: watch::Receiver<bool>,
) {
    let socket = dir.join(endpoint(resource));
    let kubelet = dir.join(KUBELET_SOCKET);
    loop {
        if *stop.borrow() {
            return;
        }
        // Wait for the kubelet's socket, then serve and register.
        if identity(&kubelet).is_none() {
            if wait(&mut stop, CHECK).await {
                return;
            }
            continue;
        }
        let served = match serve(&socket, resource, state.clone()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(socket = %socket.display(), "device plugin: cannot serve: {e}");
                if wait(&mut stop, Duration::from_secs(2)).await {
                    return;
                }
                continue;
            }
        };
        let registered_with = identity(&kubelet);
        match register(&kubelet, resource).await {
            Ok(()) => tracing::info!(resource = resource.name(), "registered with the kubelet"),
            Err(e) => {
                tracing::warn!(resource = resource.name(), "device plugin: register: {e}");
                served.abort();
                if wait(&mut stop, Duration::from_secs(1)).await {
                    return;
                }
                continue;
            }
        }
        // Serve until the kubelet restarts (its socket changes or ours is gone).
        loop {
            if wait(&mut stop, CHECK).await {
                served.abort();
                let _ = std::fs::remove_file(&socket);
                return;
            }
            if identity(&socket).is_none() || identity(&kubelet) != registered_with {
                tracing::info!(
                    resource = resource.name(),
                    "kubelet restarted: registering again"
                );
                break;
            }
        }
        served.abort();
    }
}

/// True when `stop` turned (or was) true within `d`.
async fn wait(stop: &mut watch::Receiver<bool>, d: Duration) -> bool {
    if *stop.borrow() {
        return true;
    }
    let _ = tokio::time::timeout(d, stop.changed()).await;
    *stop.borrow()
}

fn serve(
    socket: &Path,
    resource: Resource,
    state: Arc<PluginState>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    match std::fs::remove_file(socket) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = tokio::net::UnixListener::bind(socket)?;
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
    let service = DevicePluginServer::new(Plugin { resource, state });
    Ok(tokio::spawn(async move {
        if let Err(e) = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(incoming)
            .await
        {
            tracing::warn!("device plugin server: {e}");
        }
    }))
}

async fn register(kubelet: &Path, resource: Resource) -> Result<(), String> {
    let channel = uds_channel(kubelet).await.map_err(|e| e.to_string())?;
    RegistrationClient::new(channel)
        .register(RegisterRequest {
            version: VERSION.into(),
            endpoint: endpoint(resource).into(),
            resource_name: resource.name().into(),
            options: Some(options()),
        })
        .await
        .map_err(|e| e.message().to_string())?;
    Ok(())
}
