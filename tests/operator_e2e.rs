//! The operator end to end: the real controller and a real `kube::Client`
//! against the in-process API-server stand-in (`support/apiserver.rs`).

#[path = "support/apiserver.rs"]
mod apiserver;

use apiserver::ApiServer;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Binding, Node, ObjectReference, Pod};
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use serde_json::json;

fn pod(name: &str) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "x"}},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]}
    }))
    .unwrap()
}

/// The stand-in keeps the API-server semantics a controller relies on.
#[tokio::test]
async fn stand_in_keeps_resource_versions_bindings_and_watches() {
    let server = ApiServer::start().await;
    let client = server.client();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let created = pods
        .create(&PostParams::default(), &pod("a"))
        .await
        .unwrap();
    let rv = created.metadata.resource_version.clone().unwrap();

    // Duplicate create: 409 AlreadyExists.
    let dup = pods
        .create(&PostParams::default(), &pod("a"))
        .await
        .unwrap_err();
    assert!(
        matches!(dup, kube::Error::Api(ref s) if s.code == 409),
        "{dup:?}"
    );

    // Stale write: 409 Conflict.
    let mut fresh = created.clone();
    fresh
        .metadata
        .labels
        .get_or_insert_default()
        .insert("v".into(), "2".into());
    pods.replace("a", &PostParams::default(), &fresh)
        .await
        .unwrap();
    let stale = pods
        .replace("a", &PostParams::default(), &fresh)
        .await
        .unwrap_err();
    assert!(
        matches!(stale, kube::Error::Api(ref s) if s.code == 409),
        "{stale:?}"
    );

    // Binding sets nodeName once and copies annotations.
    let binding = Binding {
        metadata: ObjectMeta {
            name: Some("a".into()),
            annotations: Some([("zhisuan.io/gpu-devices".to_string(), "0,1".to_string())].into()),
            ..Default::default()
        },
        target: ObjectReference {
            kind: Some("Node".into()),
            name: Some("n1".into()),
            ..Default::default()
        },
    };
    let body = serde_json::to_vec(&binding).unwrap();
    let req = http_post(
        &server,
        "/api/v1/namespaces/default/pods/a/binding",
        body.clone(),
    )
    .await;
    assert_eq!(req, 201);
    let bound = pods.get("a").await.unwrap();
    assert_eq!(bound.spec.unwrap().node_name.as_deref(), Some("n1"));
    assert_eq!(
        bound.metadata.annotations.unwrap()["zhisuan.io/gpu-devices"],
        "0,1"
    );
    assert_eq!(
        http_post(&server, "/api/v1/namespaces/default/pods/a/binding", body).await,
        409
    );

    // Status subresource: the main resource cannot change status, /status can.
    let patch = json!({"status": {"phase": "Running"}});
    let p = pods
        .patch("a", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    assert_eq!(p.status.unwrap().phase, None);
    let p = pods
        .patch_status("a", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    assert_eq!(p.status.unwrap().phase.as_deref(), Some("Running"));

    // Finalizers hold a delete until removed.
    let fin = json!({"metadata": {"finalizers": ["x/y"]}});
    pods.patch("a", &PatchParams::default(), &Patch::Merge(&fin))
        .await
        .unwrap();
    pods.delete("a", &Default::default()).await.unwrap();
    let held = pods.get("a").await.unwrap();
    assert!(held.metadata.deletion_timestamp.is_some());
    let unfin = json!({"metadata": {"finalizers": null}});
    pods.patch("a", &PatchParams::default(), &Patch::Merge(&unfin))
        .await
        .unwrap();
    assert!(pods.get_opt("a").await.unwrap().is_none());

    // A watch from an old version replays what happened since; a compacted
    // history answers 410 and the kube watcher relists by itself.
    let nodes: Api<Node> = Api::all(client.clone());
    let (tx, mut names) = tokio::sync::mpsc::unbounded_channel();
    let watch_nodes = nodes.clone();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(watcher(watch_nodes, watcher::Config::default()));
        while let Some(ev) = stream.next().await {
            if let Ok(watcher::Event::Apply(n) | watcher::Event::InitApply(n)) = ev {
                if tx.send(n.metadata.name.unwrap()).is_err() {
                    return;
                }
            }
        }
    });
    let node = |name: &str| -> Node {
        serde_json::from_value(json!({"metadata": {"name": name}})).unwrap()
    };
    nodes
        .create(&PostParams::default(), &node("n1"))
        .await
        .unwrap();
    assert_eq!(next_name(&mut names).await, "n1");
    wait_for(|| server.request_count("watch", "v1/nodes") >= 1).await;
    // Unrelated writes move the global version past the watcher's.
    pods.create(&PostParams::default(), &pod("b"))
        .await
        .unwrap();
    server.restart_watches();
    nodes
        .create(&PostParams::default(), &node("n2"))
        .await
        .unwrap();
    // The dropped watch resumes from a compacted version: 410, relist, watch again.
    while next_name(&mut names).await != "n2" {}
    assert!(server.request_count("watch", "v1/nodes") >= 2);
    assert!(server.request_count("list", "v1/nodes") >= 2);
    assert!(rv.parse::<u64>().unwrap() > 0);
}

async fn next_name(rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>) -> String {
    tokio::time::timeout(std::time::Duration::from_secs(10), rx.recv())
        .await
        .expect("no watch event within 10 s")
        .expect("watcher ended")
}

/// Polls a condition every 10 ms for up to 10 s (never a fixed sleep).
async fn wait_for(mut cond: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if cond() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("condition not reached within 10 s");
}

async fn http_post(server: &ApiServer, path: &str, body: Vec<u8>) -> u16 {
    let url = format!("{}{path}", server.url());
    tokio::task::spawn_blocking(move || {
        reqwest::blocking::Client::new()
            .post(url)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .unwrap()
            .status()
            .as_u16()
    })
    .await
    .unwrap()
}
