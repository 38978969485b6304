//! A watched object held once. kube-runtime's reflector stores a copy of
//! every object its watch decodes (`Writer::apply_watcher_event` takes the
//! event by reference and clones the object into the cache), so each change
//! of a workload was decoded once and deep-copied once — a tree of JSON
//! maps and strings, ~6 % of the controller's CPU while binding. A
//! [`Shared`] object is decoded into an `Arc`: the cache's copy is a
//! reference count, and the cache, the event and the scheduling loop's
//! views all read the one decoded object.

use std::borrow::Cow;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{DynamicObject, ObjectMeta, TypeMeta};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::Resource;
use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

/// An object of kind `K` behind one `Arc`; cloning it shares the object.
#[derive(Debug)]
pub(super) struct Shared<K>(pub(super) Arc<K>);

impl<K> Clone for Shared<K> {
    fn clone(&self) -> Self {
        Shared(Arc::clone(&self.0))
    }
}

impl<K> std::ops::Deref for Shared<K> {
    type Target = K;

    fn deref(&self) -> &K {
        &self.0
    }
}

impl<K: Resource + Clone> Resource for Shared<K> {
    type DynamicType = K::DynamicType;
    type Scope = K::Scope;

    fn kind(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::kind(dt)
    }

    fn group(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::group(dt)
    }

    fn version(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::version(dt)
    }

    fn api_version(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::api_version(dt)
    }

    fn plural(dt: &Self::DynamicType) -> Cow<'_, str> {
        K::plural(dt)
    }

    fn url_path(dt: &Self::DynamicType, namespace: Option<&str>) -> String {
        K::url_path(dt, namespace)
    }

    fn meta(&self) -> &ObjectMeta {
        self.0.meta()
    }

    /// Copies the object first if it is shared (nothing in the controller
    /// changes a cached object; kube-runtime may on its own copies).
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        Arc::make_mut(&mut self.0).meta_mut()
    }
}

impl<'de, K: Decode> Deserialize<'de> for Shared<K> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        K::decode(d).map(|k| Shared(Arc::new(k)))
    }
}

impl<K: Serialize> Serialize for Shared<K> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

/// How a shared object is decoded from a watch event.
pub(super) trait Decode: Sized {
    fn decode<'de, D: Deserializer<'de>>(d: D) -> Result<Self, D::Error>;
}

impl Decode for Pod {
    fn decode<'de, D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Pod::deserialize(d)
    }
}

/// In one pass over the object's fields. `DynamicObject`'s own decoding
/// (two flattened fields) first buffers the whole object as serde
/// `Content` and then decodes that again; this gives the same object
/// (`decodes_as_dynamic_object_does`).
impl Decode for DynamicObject {
    fn decode<'de, D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(ObjectFields)
    }
}

struct ObjectFields;

impl<'de> Visitor<'de> for ObjectFields {
    type Value = DynamicObject;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a Kubernetes object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<DynamicObject, A::Error> {
        // `apiVersion` and `kind` in the order they came.
        let mut type_fields: Vec<(String, Value)> = Vec::with_capacity(2);
        let mut metadata = None;
        let mut data = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "apiVersion" | "kind" => {
                    let value = map.next_value::<Value>()?;
                    type_fields.push((key, value));
                }
                "metadata" => metadata = Some(map.next_value::<ObjectMeta>()?),
                _ => {
                    let value = map.next_value::<Value>()?;
                    data.insert(key, value);
                }
            }
        }
        Ok(DynamicObject {
            types: type_meta(type_fields, &mut data),
            metadata: metadata.unwrap_or_default(),
            data: Value::Object(data),
        })
    }
}

/// The flattened `Option<TypeMeta>` as serde decodes it: both fields
/// strings, or none — and then the fields serde's attempt took (those up
/// to the first that is not a string) are not in the data; the rest are.
fn type_meta(
    fields: Vec<(String, Value)>,
    data: &mut serde_json::Map<String, Value>,
) -> Option<TypeMeta> {
    let (mut api_version, mut kind) = (None, None);
    let mut fields = fields.into_iter();
    for (key, value) in fields.by_ref() {
        let Value::String(text) = value else { break };
        match key.as_str() {
            "apiVersion" => api_version = Some(text),
            _ => kind = Some(text),
        }
    }
    data.extend(fields);
    Some(TypeMeta {
        api_version: api_version?,
        kind: kind?,
    })
}

/// The objects a cache of shared objects holds now, each an `Arc` of the
/// object itself (no copy).
pub(super) fn state<K>(store: &Store<Shared<K>>) -> Vec<Arc<K>>
where
    K: Resource + Clone + 'static,
    K::DynamicType: std::hash::Hash + Eq + Clone,
{
    unwrap_all(store.state())
}

/// The objects a cache of shared objects holds now that `pred` accepts
/// (only those are collected).
pub(super) fn state_filter<K>(store: &Store<Shared<K>>, pred: impl Fn(&K) -> bool) -> Vec<Arc<K>>
where
    K: Resource + Clone + 'static,
    K::DynamicType: std::hash::Hash + Eq + Clone,
{
    unwrap_all(store.state_filter(|s| pred(s)))
}

/// The cache's `Arc`s of [`Shared`] objects as `Arc`s of the objects, in
/// the vector the cache handed out: both are one pointer, so collecting
/// the consuming iterator reuses its buffer (std's in-place collect) — one
/// vector a pass per cache, not two.
fn unwrap_all<K>(cached: Vec<Arc<Shared<K>>>) -> Vec<Arc<K>> {
    cached.into_iter().map(|s| Arc::clone(&s.0)).collect()
}

/// The object a cache of shared objects holds under `at`.
pub(super) fn get<K>(store: &Store<Shared<K>>, at: &ObjectRef<Shared<K>>) -> Option<Arc<K>>
where
    K: Resource + Clone + 'static,
    K::DynamicType: std::hash::Hash + Eq + Clone,
{
    store.get(at).map(|s| Arc::clone(&s.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::api::ApiResource;
    use kube::core::WatchEvent;
    use kube::runtime::reflector::store::Writer;
    use kube::runtime::watcher;

    /// The point of the type: the cache holds the very object the watch
    /// decoded, not a copy (kube-runtime's reflector clones what it
    /// caches). Fails if `Shared`'s clone copies the object.
    #[test]
    fn the_cache_holds_the_decoded_object_not_a_copy() {
        let ar = ApiResource::from_gvk_with_plural(
            &kube::api::GroupVersionKind::gvk("zhisuan.io", "v1alpha1", "TrainingJob"),
            "trainingjobs",
        );
        let decoded: Shared<DynamicObject> = serde_json::from_value(serde_json::json!({
            "apiVersion": "zhisuan.io/v1alpha1", "kind": "TrainingJob",
            "metadata": {"name": "job", "namespace": "team"},
            "spec": {"gpus": 1},
        }))
        .unwrap();
        let mut writer = Writer::<Shared<DynamicObject>>::new(ar);
        writer.apply_watcher_event(&watcher::Event::Init);
        writer.apply_watcher_event(&watcher::Event::InitApply(decoded.clone()));
        writer.apply_watcher_event(&watcher::Event::InitDone);
        let cached = state(&writer.as_reader());
        assert_eq!(cached.len(), 1);
        assert!(Arc::ptr_eq(&cached[0], &decoded.0));
        assert_eq!(cached[0].data["spec"]["gpus"], 1);
    }

    /// A pass turns each cache's `Arc<Shared<K>>`s into `Arc<K>`s in the
    /// vector the cache handed out. Fails if the objects are collected
    /// into a second vector (`.iter()` instead of `.into_iter()`).
    #[test]
    fn the_objects_are_handed_on_in_the_caches_vector() {
        let cached: Vec<Arc<Shared<u32>>> =
            (0..100).map(|i| Arc::new(Shared(Arc::new(i)))).collect();
        let buffer = cached.as_ptr() as usize;
        let objects = unwrap_all(cached);
        assert_eq!(objects.as_ptr() as usize, buffer);
        assert_eq!(objects.iter().map(|o| **o).sum::<u32>(), 4950);
    }

    /// A change through `meta_mut` never reaches other holders of the
    /// object.
    #[test]
    fn a_change_to_a_shared_object_is_made_on_a_copy() {
        let a: Shared<DynamicObject> = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "X", "metadata": {"name": "a"},
        }))
        .unwrap();
        let mut b = a.clone();
        b.meta_mut().name = Some("b".into());
        assert_eq!(a.metadata.name.as_deref(), Some("a"));
        assert_eq!(b.metadata.name.as_deref(), Some("b"));
        assert_eq!(serde_json::to_value(&b).unwrap()["metadata"]["name"], "b");
    }

    /// The one-pass decoding gives the object `DynamicObject`'s own
    /// decoding gives, for API-server objects and odd ones alike, and
    /// inside a watch event. Fails if a field is kept twice (`apiVersion`
    /// in the data too), dropped, or typed differently.
    #[test]
    fn decodes_as_dynamic_object_does() {
        let documents = [
            r#"{"apiVersion":"zhisuan.io/v1alpha1","kind":"TrainingJob",
                "metadata":{"name":"j","namespace":"team","uid":"u-1","resourceVersion":"42",
                  "finalizers":["zhisuan.io/cleanup"],"labels":{"a":"b"},
                  "creationTimestamp":"2026-12-07T00:00:00Z","generation":3},
                "spec":{"gpus":8,"template":{"spec":{"containers":[{"name":"c","image":"i"}]}}},
                "status":{"phase":"Running","placement":{"region":"west","replicas":[{"pod":"j-0","node":"n1","gpus":[0,1]}]},
                  "conditions":[{"type":"Scheduled","status":"True","message":"调度 ok \"quoted\""}]}}"#,
            r#"{"kind":"TrainingJob","spec":{}}"#,
            r#"{"apiVersion":"v1","metadata":{"name":"x"}}"#,
            r#"{"apiVersion":7,"kind":"X","metadata":{"name":"x"},"other":null}"#,
            r#"{"metadata":{},"a":[1,2.5,-3,true,{"b":"c"}],"z":"last"}"#,
            r#"{}"#,
        ];
        for doc in documents {
            let theirs: DynamicObject = serde_json::from_str(doc).unwrap();
            let ours: Shared<DynamicObject> = serde_json::from_str(doc).unwrap();
            assert_eq!(*ours, theirs, "{doc}");
            let event = format!(r#"{{"type":"MODIFIED","object":{doc}}}"#);
            let theirs: WatchEvent<DynamicObject> = serde_json::from_str(&event).unwrap();
            let ours: WatchEvent<Shared<DynamicObject>> = serde_json::from_str(&event).unwrap();
            match (theirs, ours) {
                (WatchEvent::Modified(a), WatchEvent::Modified(b)) => assert_eq!(*b, a),
                other => panic!("{other:?}"),
            }
        }
        for bad in [r#"{"metadata":{"name":5}}"#, r#"[1]"#, r#""s""#] {
            assert!(serde_json::from_str::<DynamicObject>(bad).is_err(), "{bad}");
            assert!(
                serde_json::from_str::<Shared<DynamicObject>>(bad).is_err(),
                "{bad}"
            );
        }
    }
}
