//! `zhisuan admin-key` (the chart's install hook) against the API-server
//! stand-in: it makes the admin-key Secret once and never replaces a key that
//! exists, so renders and upgrades never change the admin key (issue #16,
//! item 13).

#[path = "support/apiserver.rs"]
mod apiserver;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use zhisuan::cmd::admin_key::{ensure, random_key, Outcome};

fn key_of(s: &Secret) -> Vec<u8> {
    s.data.as_ref().unwrap()["admin-key"].0.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_key_is_made_once_and_never_replaced() {
    let server = apiserver::ApiServer::start().await;
    let client = server.client();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "zhisuan");

    let first = ensure(&client, "zhisuan", "zhisuan-admin", "admin-key")
        .await
        .unwrap();
    assert_eq!(first, Outcome::Created);
    let made = key_of(&secrets.get("zhisuan-admin").await.unwrap());
    assert_eq!(made.len(), 48);
    assert!(made.iter().all(|b| b.is_ascii_alphanumeric()));

    // An upgrade runs the hook again: the key stays.
    let again = ensure(&client, "zhisuan", "zhisuan-admin", "admin-key")
        .await
        .unwrap();
    assert_eq!(again, Outcome::Kept);
    assert_eq!(key_of(&secrets.get("zhisuan-admin").await.unwrap()), made);

    // A Secret the operator made without the key gets one; theirs is kept.
    let theirs: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "ops-admin"},
        "data": {"other": "eA=="}
    }))
    .unwrap();
    secrets
        .create(&PostParams::default(), &theirs)
        .await
        .unwrap();
    let added = ensure(&client, "zhisuan", "ops-admin", "admin-key")
        .await
        .unwrap();
    assert_eq!(added, Outcome::Added);
    let s = secrets.get("ops-admin").await.unwrap();
    assert_eq!(key_of(&s).len(), 48);
    assert_eq!(s.data.as_ref().unwrap()["other"].0, b"x");

    // Keys differ from run to run.
    assert_ne!(random_key().unwrap(), random_key().unwrap());
}
