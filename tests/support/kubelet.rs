//! A kubelet stand-in for device-plugin tests and benches: the real
//! Registration (device-plugin v1beta1) and PodResourcesLister (v1) services
//! over unix sockets.
#![allow(dead_code)]

use std::path::Path;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};
use zhisuan::telemetry::deviceplugin::proto::podresources as pr;
use zhisuan::telemetry::deviceplugin::proto::v1beta1 as dp;

/// The kubelet's Registration service: forwards each request to the test.
pub struct Registrar(pub mpsc::UnboundedSender<dp::RegisterRequest>);

#[tonic::async_trait]
impl dp::registration_server::Registration for Registrar {
    async fn register(
        &self,
        req: Request<dp::RegisterRequest>,
    ) -> Result<Response<dp::Empty>, Status> {
        let _ = self.0.send(req.into_inner());
        Ok(Response::new(dp::Empty {}))
    }
}

/// The kubelet's pod-resources service: what the test says pods hold.
#[derive(Clone, Default)]
pub struct PodResources(pub Arc<Mutex<Vec<pr::PodResources>>>);

#[tonic::async_trait]
impl pr::pod_resources_lister_server::PodResourcesLister for PodResources {
    async fn list(
        &self,
        _: Request<pr::ListPodResourcesRequest>,
    ) -> Result<Response<pr::ListPodResourcesResponse>, Status> {
        Ok(Response::new(pr::ListPodResourcesResponse {
            pod_resources: self.0.lock().unwrap().clone(),
        }))
    }
}

pub fn serve_uds(
    path: &Path,
    router: tonic::transport::server::Router,
) -> tokio::task::JoinHandle<()> {
    let _ = std::fs::remove_file(path);
    let listener = tokio::net::UnixListener::bind(path).unwrap();
    tokio::spawn(async move {
        router
            .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener))
            .await
            .unwrap();
    })
}

pub fn kubelet_registration(
    tx: mpsc::UnboundedSender<dp::RegisterRequest>,
) -> tonic::transport::server::Router {
    tonic::transport::Server::builder().add_service(
        dp::registration_server::RegistrationServer::new(Registrar(tx)),
    )
}
