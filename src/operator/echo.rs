//! Writes whose answers are read only for what the controller uses. The API
//! server echoes the whole object after each write; decoding that echo into
//! a typed pod or a workload's JSON tree, only to read a resourceVersion, is
//! work the binding path did several times per pod. These read the answer
//! as the caller's type (`Written`: the resourceVersion; `IgnoredAny`:
//! nothing) and skip the rest without building it.

use kube::api::{Api, Patch, PatchParams, PostParams};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// An object's metadata as far as the controller reads a write's answer.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Meta {
    #[serde(default)]
    pub(super) resource_version: Option<String>,
}

/// A written object: its metadata.
#[derive(Debug, Default, Deserialize)]
pub(super) struct Written {
    #[serde(default)]
    pub(super) metadata: Meta,
}

/// Creates `obj` through `api`, reading the answer as `T`.
pub(super) async fn create<K, T>(api: &Api<K>, obj: &K) -> Result<T, kube::Error>
where
    K: kube::Resource + Serialize + Clone,
    T: DeserializeOwned,
{
    let body = serde_json::to_vec(obj).map_err(kube::Error::SerdeError)?;
    let req = kube::core::Request::new(api.resource_url())
        .create(&PostParams::default(), body)
        .map_err(kube::Error::BuildRequest)?;
    api.clone().into_client().request(req).await
}

/// Patches the status of `name` through `api`, reading the answer as `T`.
pub(super) async fn patch_status<K, P, T>(
    api: &Api<K>,
    name: &str,
    pp: &PatchParams,
    patch: &Patch<P>,
) -> Result<T, kube::Error>
where
    K: kube::Resource + Clone,
    P: Serialize,
    T: DeserializeOwned,
{
    let req = kube::core::Request::new(api.resource_url())
        .patch_subresource("status", name, pp, patch)
        .map_err(kube::Error::BuildRequest)?;
    api.clone().into_client().request(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_is_read_for_its_version_only() {
        let echo = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p",
            "resourceVersion":"42","labels":{"a":"b"}},
            "spec":{"nodeName":"n1","containers":[{"name":"c","image":"i"}]}}"#;
        let pod: Written = serde_json::from_str(echo).unwrap();
        assert_eq!(pod.metadata.resource_version.as_deref(), Some("42"));
        let status: Written =
            serde_json::from_str(r#"{"kind":"Status","status":"Success","code":201}"#).unwrap();
        assert_eq!(status.metadata.resource_version, None);
    }
}
