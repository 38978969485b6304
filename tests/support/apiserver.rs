//! An in-process Kubernetes API-server stand-in for tests and benchmarks.
//!
//! A real `kube::Client` talks to it over HTTP on 127.0.0.1. It is generic:
//! every resource is a JSON object under `(group/version/plural, namespace,
//! name)`, so nodes, pods, events, leases and the zhisuan CRDs all go through
//! the same code. The semantics that matter for a controller are real:
//! - one global `resourceVersion` counter; a write carrying a stale
//!   `metadata.resourceVersion` (PUT, merge patch, JSON-patch `test`) is 409;
//!   create of an existing name is 409 AlreadyExists;
//! - list returns the current `resourceVersion`; watch streams events after a
//!   given version (or synthetic ADDED for all objects when none is given),
//!   ends at `timeoutSeconds`, and answers a version older than the retained
//!   history with a 410 Gone ERROR event (the client must relist);
//!   [`ApiServer::restart_watches`] drops every open stream and compacts
//!   history, as an API-server restart does;
//! - `status` subresource: writes there change only `.status`, writes to the
//!   main resource never change `.status`; `generation` bumps on spec change;
//! - `pods/binding` sets `spec.nodeName` once (409 if already bound) and copies
//!   the binding's annotations onto the pod, as the real registry does; a pod
//!   may also be created bound (`spec.nodeName` set). Both count as a bind
//!   ([`ApiServer::bindings`]) and both wait at the bind gate;
//! - delete with finalizers sets `deletionTimestamp`; the object goes away
//!   when the last finalizer is removed;
//! - patch: JSON merge patch, JSON patch, strategic merge (treated as merge:
//!   lists replaced) and server-side apply (treated as a merge of the applied
//!   fields; creates the object if absent);
//! - label selectors (`=`, `==`, `!=`, `key`, `!key`) and field selectors on
//!   any dotted path (`metadata.name`, `spec.nodeName`).
//!
//! - list pagination: `limit` and `continue` (the token names the last key
//!   returned; `remainingItemCount` is set), as chunked lists behave;
//!
//! Not modelled: admission webhooks, schema validation, RBAC, expiry of
//! continue tokens (410), garbage collection by owner references.

#![allow(dead_code)]

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use tokio::sync::{broadcast, watch};

/// Events kept for watches that resume from an older resourceVersion.
const HISTORY: usize = 200_000;

/// Changes of one resource a watch may fall behind by before it is cut off
/// (it then re-watches, as from a real API server).
const CHANNEL: usize = 65_536;

/// `{"object":..,"type":..}\n` (the keys in serde_json's order), written
/// straight from the stored object rather than through a copy of it.
fn event_line(kind: &str, obj: &Value) -> Bytes {
    let mut line = Vec::with_capacity(1024);
    line.extend_from_slice(b"{\"object\":");
    serde_json::to_writer(&mut line, obj).expect("a JSON value serialises");
    line.extend_from_slice(b",\"type\":");
    serde_json::to_writer(&mut line, kind).expect("a string serialises");
    line.extend_from_slice(b"}\n");
    Bytes::from(line)
}

/// A change, as watch streams send it.
struct Event {
    rv: u64,
    resource: Arc<str>,
    namespace: Arc<str>,
    /// The watch line ([`event_line`]), serialised once for every watcher.
    line: Bytes,
    object: Arc<Value>,
}

/// A change kept for watches that resume from an older resourceVersion: the
/// line alone. Holding the object too kept every replaced version's parsed
/// tree alive as long as the history (0.6 GB of the operator bench's
/// 2.5 GB); a resumed watch with a selector parses the line again instead,
/// which is rare.
struct Past {
    rv: u64,
    /// Resources and namespaces are few: each kept change shares the
    /// stand-in's one copy of its names (`Inner::name`).
    resource: Arc<str>,
    namespace: Arc<str>,
    line: Bytes,
}

/// One resource's objects: (namespace, name) → object.
type Objects = BTreeMap<(String, String), Arc<Value>>;

#[derive(Default)]
struct Inner {
    rv: u64,
    /// resource ("group/version/plural") → (namespace, name) → object.
    objects: BTreeMap<Arc<str>, Objects>,
    history: VecDeque<Past>,
    /// Every resource and namespace name an event carried, once.
    names: std::collections::HashSet<Arc<str>>,
    /// One channel of changes per resource, as the real API server's watch
    /// cache is per resource: a change wakes only the watches of its own
    /// resource.
    channels: BTreeMap<Arc<str>, broadcast::Sender<Arc<Event>>>,
    /// Oldest resourceVersion a watch may resume from.
    compacted_rv: u64,
    uid_counter: u64,
    /// Counts requests by verb, for tests that check what a client did.
    requests: BTreeMap<String, u64>,
    /// Pods bound so far (by a binding, or created on a node).
    bindings: u64,
    /// Most items one list answer held, per resource.
    largest_list: BTreeMap<String, usize>,
}

/// Shared state of the stand-in.
pub struct Store {
    inner: Mutex<Inner>,
    /// When set, each bind (a binding, or a pod created on a node) takes a
    /// permit: binds past the paused count hang.
    bind_gate: Mutex<Option<Arc<tokio::sync::Semaphore>>>,
    restart: watch::Sender<u64>,
    /// Changes handed to watch streams, before their selectors looked at
    /// them (for tests that check who is woken by a change).
    handed: AtomicU64,
}

/// A running stand-in API server.
pub struct ApiServer {
    pub addr: SocketAddr,
    pub store: Arc<Store>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ApiServer {
    /// Binds 127.0.0.1:0 and serves until dropped.
    pub async fn start() -> ApiServer {
        let (restart, _) = watch::channel(0);
        let store = Arc::new(Store {
            inner: Mutex::new(Inner {
                rv: 1,
                ..Default::default()
            }),
            restart,
            bind_gate: Mutex::new(None),
            handed: Default::default(),
        });
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(store.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        ApiServer { addr, store, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A real kube client pointed at this server (default namespace "default").
    pub fn client(&self) -> kube::Client {
        let config = kube::Config::new(self.url().parse().unwrap());
        kube::Client::try_from(config).unwrap()
    }

    /// Ends every open watch stream and forgets history, as a restart of the
    /// real API server (or etcd compaction) does: clients must re-watch, and
    /// those resuming from an old version get 410 Gone and relist.
    pub fn restart_watches(&self) {
        {
            let mut inner = self.store.inner.lock().unwrap();
            inner.history.clear();
            inner.compacted_rv = inner.rv;
        }
        self.store.restart.send_modify(|e| *e += 1);
    }

    /// Lets `n` more pod binds through (bindings, or pods created on a
    /// node), then holds every further one (the request hangs) until
    /// [`ApiServer::resume_bindings`]: a way to stop a controller exactly
    /// mid-gang.
    pub fn pause_bindings_after(&self, n: usize) {
        *self.store.bind_gate.lock().unwrap() = Some(Arc::new(tokio::sync::Semaphore::new(n)));
    }

    /// Releases held bindings and stops gating.
    pub fn resume_bindings(&self) {
        if let Some(gate) = self.store.bind_gate.lock().unwrap().take() {
            gate.add_permits(tokio::sync::Semaphore::MAX_PERMITS / 2);
        }
    }

    /// Current objects of a resource (`"v1/pods"`, `"zhisuan.io/v1alpha1/trainingjobs"`).
    pub fn objects(&self, resource: &str) -> Vec<Value> {
        let inner = self.store.inner.lock().unwrap();
        inner
            .objects
            .get(resource)
            .map(|m| m.values().map(|v| (**v).clone()).collect())
            .unwrap_or_default()
    }

    /// Changes handed to open watch streams so far, counted once per stream
    /// and change, whether or not its selectors wanted it.
    pub fn changes_handed_to_watches(&self) -> u64 {
        self.store.handed.load(Ordering::Relaxed)
    }

    /// Pods bound since start, by a binding or created on a node (O(1), for
    /// benchmarks that poll).
    pub fn bindings(&self) -> u64 {
        self.store.inner.lock().unwrap().bindings
    }

    /// How many objects of a resource satisfy `pred` (no copies: for
    /// benchmarks that poll without stealing CPU from what they measure).
    pub fn count(&self, resource: &str, pred: impl Fn(&Value) -> bool) -> usize {
        let inner = self.store.inner.lock().unwrap();
        inner
            .objects
            .get(resource)
            .map_or(0, |m| m.values().filter(|v| pred(v)).count())
    }

    /// Most items one list answer of `resource` held so far.
    pub fn largest_list(&self, resource: &str) -> usize {
        let inner = self.store.inner.lock().unwrap();
        inner.largest_list.get(resource).copied().unwrap_or(0)
    }

    /// Every request count so far ("verb resource" → n).
    pub fn requests(&self) -> BTreeMap<String, u64> {
        self.store.inner.lock().unwrap().requests.clone()
    }

    /// How many requests of a verb ("create", "update", "patch", "delete",
    /// "list", "watch", "get", "bind") the server has answered for a resource.
    pub fn request_count(&self, verb: &str, resource: &str) -> u64 {
        let inner = self.store.inner.lock().unwrap();
        inner
            .requests
            .get(&format!("{verb} {resource}"))
            .copied()
            .unwrap_or(0)
    }
}

/// What a request path names.
struct Target {
    /// "group/version/plural" ("v1/pods" for the core group).
    resource: String,
    api_version: String,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

fn parse_path(path: &str) -> Option<Target> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match *segs.first()? {
        "api" => ("", *segs.get(1)?, &segs[2..]),
        "apis" => (*segs.get(1)?, *segs.get(2)?, &segs[3..]),
        _ => return None,
    };
    let (namespace, rest) = if rest.first() == Some(&"namespaces") && rest.len() >= 3 {
        (Some(rest[1].to_string()), &rest[2..])
    } else {
        (None, rest)
    };
    let plural = *rest.first()?;
    let api_version = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(Target {
        resource: format!("{api_version}/{plural}"),
        api_version,
        namespace,
        name: rest.get(1).map(|s| s.to_string()),
        subresource: rest.get(2).map(|s| s.to_string()),
    })
}

fn status_error(code: u16, reason: &str, message: String) -> Response {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code,
    });
    (
        StatusCode::from_u16(code).unwrap(),
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn ok_json(code: StatusCode, v: &Value) -> Response {
    (code, [("content-type", "application/json")], v.to_string()).into_response()
}

fn query_map(uri: &Uri) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for pair in uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        out.insert(decode(k), decode(v));
    }
    out
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A parsed label selector requirement.
enum Requirement {
    Eq(String, String),
    NotEq(String, String),
    Exists(String),
    NotExists(String),
}

fn parse_selector(s: &str) -> Vec<Requirement> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            if let Some((k, v)) = p.split_once("!=") {
                Requirement::NotEq(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = p.split_once("==") {
                Requirement::Eq(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = p.split_once('=') {
                Requirement::Eq(k.trim().into(), v.trim().into())
            } else if let Some(k) = p.strip_prefix('!') {
                Requirement::NotExists(k.trim().into())
            } else {
                Requirement::Exists(p.into())
            }
        })
        .collect()
}

fn lookup<'a>(obj: &'a Value, dotted: &str) -> Option<&'a Value> {
    dotted.split('.').try_fold(obj, |v, k| v.get(k))
}

fn value_str(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        other => Some(other.to_string()),
    }
}

/// Label and field selectors of one request.
struct Filter {
    labels: Vec<Requirement>,
    fields: Vec<Requirement>,
}

impl Filter {
    fn from_query(q: &BTreeMap<String, String>) -> Filter {
        Filter {
            labels: parse_selector(q.get("labelSelector").map(String::as_str).unwrap_or("")),
            fields: parse_selector(q.get("fieldSelector").map(String::as_str).unwrap_or("")),
        }
    }

    fn is_empty(&self) -> bool {
        self.labels.is_empty() && self.fields.is_empty()
    }

    fn matches(&self, obj: &Value) -> bool {
        let labels = obj.pointer("/metadata/labels");
        let label = |k: &str| value_str(labels.and_then(|l| l.get(k)));
        let field = |k: &str| value_str(lookup(obj, k)).unwrap_or_default();
        self.labels.iter().all(|r| match r {
            Requirement::Eq(k, v) => label(k).as_deref() == Some(v.as_str()),
            Requirement::NotEq(k, v) => label(k).as_deref() != Some(v.as_str()),
            Requirement::Exists(k) => label(k).is_some(),
            Requirement::NotExists(k) => label(k).is_none(),
        }) && self.fields.iter().all(|r| match r {
            Requirement::Eq(k, v) => &field(k) == v,
            Requirement::NotEq(k, v) => &field(k) != v,
            Requirement::Exists(k) => !field(k).is_empty(),
            Requirement::NotExists(k) => field(k).is_empty(),
        })
    }
}

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn content_type(headers: &HeaderMap) -> &str {
    headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
}

async fn handle(
    State(store): State<Arc<Store>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(t) = parse_path(uri.path()) else {
        return status_error(404, "NotFound", format!("no route for {}", uri.path()));
    };
    let q = query_map(&uri);
    let body: Value = if body.is_empty() {
        Value::Null
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => return status_error(400, "BadRequest", format!("body is not JSON: {e}")),
        }
    };
    let watching = matches!(q.get("watch").map(String::as_str), Some("true" | "1"));
    let verb = match (&method, t.name.is_some(), t.subresource.as_deref()) {
        (&Method::GET, false, _) if watching => "watch",
        (&Method::GET, false, _) => "list",
        (&Method::GET, true, _) => "get",
        (&Method::POST, true, Some("binding")) => "bind",
        (&Method::POST, _, _) => "create",
        (&Method::PUT, true, _) => "update",
        (&Method::PATCH, true, _) => "patch",
        (&Method::DELETE, true, _) => "delete",
        _ => return status_error(405, "MethodNotAllowed", format!("{method} {}", uri.path())),
    };
    {
        let mut inner = store.inner.lock().unwrap();
        *inner
            .requests
            .entry(format!("{verb} {}", t.resource))
            .or_default() += 1;
    }
    match verb {
        "watch" => watch_stream(&store, &t, &q),
        "list" => list(&store, &t, &q),
        "get" => get(&store, &t),
        "bind" => {
            pass_bind_gate(&store).await;
            bind(&store, &t, body)
        }
        "create" if t.resource == "v1/pods" && bound_at_create(&body) => {
            pass_bind_gate(&store).await;
            let created = create(&store, &t, body);
            if created.status() == StatusCode::CREATED {
                store.inner.lock().unwrap().bindings += 1;
            }
            created
        }
        "create" => create(&store, &t, body),
        "update" => update(&store, &t, body),
        "patch" => patch(&store, &t, content_type(&headers), body),
        "delete" => delete(&store, &t, body),
        _ => unreachable!(),
    }
}

fn key_of(t: &Target) -> (String, String) {
    (
        t.namespace.clone().unwrap_or_default(),
        t.name.clone().unwrap_or_default(),
    )
}

fn list(store: &Store, t: &Target, q: &BTreeMap<String, String>) -> Response {
    let filter = Filter::from_query(q);
    let limit = q
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .filter(|&l| l > 0);
    // The continue token: the last (namespace, name) returned, hex-encoded.
    let after: Option<(String, String)> = q
        .get("continue")
        .filter(|c| !c.is_empty())
        .and_then(|c| hex::decode(c).ok())
        .and_then(|b| serde_json::from_slice(&b).ok());
    let mut inner = store.inner.lock().unwrap();
    let matching: Vec<((String, String), Value)> = inner
        .objects
        .get(t.resource.as_str())
        .into_iter()
        .flat_map(|m| m.iter())
        .filter(|((ns, _), _)| t.namespace.as_ref().is_none_or(|want| want == ns))
        .filter(|(k, _)| after.as_ref().is_none_or(|a| *k > a))
        .filter(|(_, o)| filter.matches(o))
        .map(|(k, o)| (k.clone(), (**o).clone()))
        .collect();
    let take = limit.unwrap_or(usize::MAX).min(matching.len());
    let remaining = matching.len() - take;
    let last = take.checked_sub(1).map(|i| matching[i].0.clone());
    let items: Vec<Value> = matching.into_iter().take(take).map(|(_, o)| o).collect();
    let largest = inner.largest_list.entry(t.resource.clone()).or_default();
    *largest = (*largest).max(items.len());
    let kind = items
        .first()
        .and_then(|o| o.get("kind"))
        .and_then(Value::as_str)
        .map(|k| format!("{k}List"))
        .unwrap_or_else(|| "List".into());
    let mut metadata = json!({"resourceVersion": inner.rv.to_string()});
    if let (Some(last), true) = (last, remaining > 0) {
        metadata["continue"] = json!(hex::encode(serde_json::to_vec(&last).unwrap()));
        metadata["remainingItemCount"] = json!(remaining);
    }
    let body = json!({
        "apiVersion": t.api_version,
        "kind": kind,
        "metadata": metadata,
        "items": items,
    });
    drop(inner);
    ok_json(StatusCode::OK, &body)
}

fn get(store: &Store, t: &Target) -> Response {
    let inner = store.inner.lock().unwrap();
    match inner
        .objects
        .get(t.resource.as_str())
        .and_then(|m| m.get(&key_of(t)))
    {
        Some(o) => ok_json(StatusCode::OK, o),
        None => not_found(t),
    }
}

fn not_found(t: &Target) -> Response {
    status_error(
        404,
        "NotFound",
        format!(
            "{} \"{}\" not found",
            t.resource,
            t.name.as_deref().unwrap_or("")
        ),
    )
}

impl Inner {
    /// The object a request path names, if it exists.
    fn current(&self, t: &Target) -> Option<Arc<Value>> {
        self.objects
            .get(t.resource.as_str())?
            .get(&key_of(t))
            .cloned()
    }

    fn next_rv(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }

    /// Stores `obj` (its resourceVersion already set) and publishes the change.
    fn commit(
        &mut self,
        resource: &str,
        key: (String, String),
        kind: &str,
        obj: Value,
    ) -> Arc<Value> {
        let rv = self.rv;
        let obj = Arc::new(obj);
        let (resource, namespace) = (self.name(resource), self.name(&key.0));
        let objects = self.objects.entry(resource.clone()).or_default();
        if kind == "DELETED" {
            objects.remove(&key);
        } else {
            objects.insert(key, obj.clone());
        }
        let event = Arc::new(Event {
            rv,
            resource,
            namespace,
            line: event_line(kind, &obj),
            object: obj.clone(),
        });
        if self.history.len() == HISTORY {
            if let Some(old) = self.history.pop_front() {
                self.compacted_rv = old.rv;
            }
        }
        self.history.push_back(Past {
            rv,
            resource: event.resource.clone(),
            namespace: event.namespace.clone(),
            line: event.line.clone(),
        });
        if let Some(channel) = self.channels.get(&event.resource) {
            // No receiver is fine: nobody is watching.
            let _ = channel.send(event);
        }
        obj
    }

    /// The channel of `resource`'s changes, opened on first use.
    fn channel(&mut self, resource: &str) -> &broadcast::Sender<Arc<Event>> {
        let resource = self.name(resource);
        self.channels
            .entry(resource)
            .or_insert_with(|| broadcast::channel(CHANNEL).0)
    }

    /// The one shared copy of a resource or namespace name.
    fn name(&mut self, name: &str) -> Arc<str> {
        match self.names.get(name) {
            Some(shared) => shared.clone(),
            None => {
                let shared: Arc<str> = Arc::from(name);
                self.names.insert(shared.clone());
                shared
            }
        }
    }
}

fn set_meta(obj: &mut Value, field: &str, v: Value) {
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    obj["metadata"][field] = v;
}

fn create(store: &Store, t: &Target, mut body: Value) -> Response {
    if !body.is_object() {
        return status_error(400, "BadRequest", "body must be a JSON object".into());
    }
    let mut inner = store.inner.lock().unwrap();
    let mut name = body
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if name.is_empty() {
        let Some(prefix) = body
            .pointer("/metadata/generateName")
            .and_then(Value::as_str)
        else {
            return status_error(422, "Invalid", "metadata.name: Required value".into());
        };
        inner.uid_counter += 1;
        name = format!("{prefix}{:05x}", inner.uid_counter);
    }
    let ns = t.namespace.clone().unwrap_or_default();
    let key = (ns.clone(), name.clone());
    if inner
        .objects
        .get(t.resource.as_str())
        .is_some_and(|m| m.contains_key(&key))
    {
        return status_error(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", t.resource),
        );
    }
    let rv = inner.next_rv();
    inner.uid_counter += 1;
    let uid = format!("00000000-0000-4000-8000-{:012x}", inner.uid_counter);
    set_meta(&mut body, "name", json!(name));
    if !ns.is_empty() {
        set_meta(&mut body, "namespace", json!(ns));
    }
    set_meta(&mut body, "uid", json!(uid));
    set_meta(&mut body, "resourceVersion", json!(rv.to_string()));
    set_meta(&mut body, "creationTimestamp", json!(now_rfc3339()));
    set_meta(&mut body, "generation", json!(1));
    if let Some(m) = body["metadata"].as_object_mut() {
        m.remove("deletionTimestamp");
    }
    if body.get("apiVersion").is_none() {
        body["apiVersion"] = json!(t.api_version);
    }
    // Status is the controller's: a create never sets it.
    if let Some(o) = body.as_object_mut() {
        if t.resource != "v1/events" && !t.resource.starts_with("events.k8s.io") {
            o.remove("status");
        }
    }
    let obj = inner.commit(&t.resource, key, "ADDED", body);
    drop(inner);
    ok_json(StatusCode::CREATED, &obj)
}

/// Waits for a permit while binds are paused.
async fn pass_bind_gate(store: &Store) {
    let gate = store.bind_gate.lock().unwrap().clone();
    if let Some(gate) = gate {
        if let Ok(permit) = gate.acquire().await {
            permit.forget();
        }
    }
}

/// Whether a pod's body names its node already.
fn bound_at_create(body: &Value) -> bool {
    body.pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .is_some_and(|n| !n.is_empty())
}

/// Applies a new version of an object: subresource rules, generation,
/// finalizer-driven deletion. `new` is the full desired object.
fn write(store: &Store, t: &Target, mut new: Value, expect_rv: Option<String>) -> Response {
    let mut inner = store.inner.lock().unwrap();
    let key = key_of(t);
    let Some(old) = inner.current(t) else {
        return not_found(t);
    };
    let current_rv = old
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if let Some(want) = expect_rv.filter(|s| !s.is_empty()) {
        if want != current_rv {
            return status_error(
                409,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on {} \"{}\": the object has been modified; \
                     please apply your changes to the latest version and try again",
                    t.resource, key.1
                ),
            );
        }
    }
    if !new.is_object() {
        return status_error(400, "BadRequest", "body must be a JSON object".into());
    }
    let status_only = t.subresource.as_deref() == Some("status");
    if status_only {
        let status = new.get("status").cloned();
        new = (*old).clone();
        match status {
            Some(s) => new["status"] = s,
            None => {
                if let Some(o) = new.as_object_mut() {
                    o.remove("status");
                }
            }
        }
    } else {
        match old.get("status") {
            Some(s) => new["status"] = s.clone(),
            None => {
                if let Some(o) = new.as_object_mut() {
                    o.remove("status");
                }
            }
        }
        // Immutable metadata stays the server's.
        for f in [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "name",
            "namespace",
        ] {
            match old["metadata"].get(f) {
                Some(v) => set_meta(&mut new, f, v.clone()),
                None => {
                    if let Some(m) = new["metadata"].as_object_mut() {
                        m.remove(f);
                    }
                }
            }
        }
        let mut generation = old
            .pointer("/metadata/generation")
            .and_then(Value::as_i64)
            .unwrap_or(1);
        if new.get("spec") != old.get("spec") {
            generation += 1;
        }
        set_meta(&mut new, "generation", json!(generation));
    }
    if new == *old {
        drop(inner);
        return ok_json(StatusCode::OK, &old);
    }
    let rv = inner.next_rv();
    set_meta(&mut new, "resourceVersion", json!(rv.to_string()));
    let finalizers_empty = new
        .pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .is_none_or(|f| f.is_empty());
    let deleting = new.pointer("/metadata/deletionTimestamp").is_some();
    let kind = if deleting && finalizers_empty {
        "DELETED"
    } else {
        "MODIFIED"
    };
    let obj = inner.commit(&t.resource, key, kind, new);
    drop(inner);
    ok_json(StatusCode::OK, &obj)
}

fn body_rv(body: &Value) -> Option<String> {
    body.pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .map(str::to_string)
}

fn update(store: &Store, t: &Target, body: Value) -> Response {
    let rv = body_rv(&body);
    write(store, t, body, rv)
}

fn patch(store: &Store, t: &Target, content_type: &str, body: Value) -> Response {
    let current = {
        let inner = store.inner.lock().unwrap();
        inner.current(t)
    };
    let apply = content_type.starts_with("application/apply-patch");
    let Some(current) = current else {
        if apply && t.subresource.is_none() {
            return create(store, t, body);
        }
        return not_found(t);
    };
    let mut doc = (*current).clone();
    let expect_rv;
    if content_type.starts_with("application/json-patch") {
        let mut ops: json_patch::Patch = match serde_json::from_value(body) {
            Ok(p) => p,
            Err(e) => return status_error(400, "BadRequest", format!("invalid JSON patch: {e}")),
        };
        // As in Kubernetes, `test` of null passes on a missing path (how
        // kube-rs' finalizer helper says "no finalizers yet").
        ops.0.retain(|op| match op {
            json_patch::PatchOperation::Test(t) => {
                !(t.value.is_null() && doc.pointer(t.path.as_str()).is_none())
            }
            _ => true,
        });
        if let Err(e) = json_patch::patch(&mut doc, &ops) {
            // A failed `test` op is how clients express preconditions.
            return status_error(409, "Conflict", format!("JSON patch failed: {e}"));
        }
        expect_rv = None;
    } else if apply {
        // Server-side apply by a single field manager: the applied top-level
        // fields replace the current ones (fields it no longer sends go away).
        expect_rv = body_rv(&body);
        if let (Some(d), Some(b)) = (doc.as_object_mut(), body.as_object()) {
            for (k, v) in b {
                if k == "metadata" {
                    json_patch::merge(d.entry(k.clone()).or_insert(json!({})), v);
                } else if k != "apiVersion" && k != "kind" {
                    d.insert(k.clone(), v.clone());
                }
            }
        }
    } else {
        expect_rv = body_rv(&body);
        json_patch::merge(&mut doc, &body);
    }
    write(store, t, doc, expect_rv)
}

fn delete(store: &Store, t: &Target, body: Value) -> Response {
    let key = key_of(t);
    let mut inner = store.inner.lock().unwrap();
    let Some(old) = inner.current(t) else {
        return not_found(t);
    };
    if let Some(want) = body
        .pointer("/preconditions/resourceVersion")
        .and_then(Value::as_str)
    {
        if old
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            != Some(want)
        {
            return status_error(
                409,
                "Conflict",
                "precondition resourceVersion failed".into(),
            );
        }
    }
    if let Some(want) = body.pointer("/preconditions/uid").and_then(Value::as_str) {
        if old.pointer("/metadata/uid").and_then(Value::as_str) != Some(want) {
            return status_error(409, "Conflict", "precondition uid failed".into());
        }
    }
    let has_finalizers = old
        .pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .is_some_and(|f| !f.is_empty());
    let mut obj = (*old).clone();
    let rv = inner.next_rv();
    set_meta(&mut obj, "resourceVersion", json!(rv.to_string()));
    let kind = if has_finalizers {
        if obj.pointer("/metadata/deletionTimestamp").is_none() {
            set_meta(&mut obj, "deletionTimestamp", json!(now_rfc3339()));
        }
        "MODIFIED"
    } else {
        "DELETED"
    };
    let obj = inner.commit(&t.resource, key, kind, obj);
    drop(inner);
    ok_json(StatusCode::OK, &obj)
}

fn bind(store: &Store, t: &Target, body: Value) -> Response {
    if t.resource != "v1/pods" {
        return status_error(404, "NotFound", "binding exists only for pods".into());
    }
    let Some(node) = body.pointer("/target/name").and_then(Value::as_str) else {
        return status_error(422, "Invalid", "target.name: Required value".into());
    };
    let mut inner = store.inner.lock().unwrap();
    let key = key_of(t);
    let Some(old) = inner.current(t) else {
        return not_found(t);
    };
    if let Some(bound) = old.pointer("/spec/nodeName").and_then(Value::as_str) {
        if !bound.is_empty() {
            return status_error(
                409,
                "Conflict",
                format!("pod {} is already assigned to node \"{bound}\"", key.1),
            );
        }
    }
    if old.pointer("/metadata/deletionTimestamp").is_some() {
        return status_error(409, "Conflict", format!("pod {} is being deleted", key.1));
    }
    let mut obj = (*old).clone();
    obj["spec"]["nodeName"] = json!(node);
    if let Some(ann) = body
        .pointer("/metadata/annotations")
        .and_then(Value::as_object)
    {
        if !obj["metadata"]
            .get("annotations")
            .is_some_and(Value::is_object)
        {
            obj["metadata"]["annotations"] = json!({});
        }
        for (k, v) in ann {
            obj["metadata"]["annotations"][k] = v.clone();
        }
    }
    if !obj.get("status").is_some_and(Value::is_object) {
        obj["status"] = json!({});
    }
    obj["status"]["conditions"] = json!([{
        "type": "PodScheduled", "status": "True", "lastTransitionTime": now_rfc3339()
    }]);
    let rv = inner.next_rv();
    set_meta(&mut obj, "resourceVersion", json!(rv.to_string()));
    inner.commit(&t.resource, key, "MODIFIED", obj);
    inner.bindings += 1;
    drop(inner);
    ok_json(
        StatusCode::CREATED,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
    )
}

/// What one watch asks for: a resource, perhaps in one namespace, with its
/// selectors.
struct Selection {
    resource: String,
    namespace: Option<String>,
    filter: Filter,
}

impl Selection {
    fn place(&self, resource: &str, namespace: &str) -> bool {
        resource == self.resource && self.namespace.as_ref().is_none_or(|n| n == namespace)
    }

    /// An object of `resource` in `namespace`.
    fn wants_at(&self, resource: &str, namespace: &str, obj: &Value) -> bool {
        self.place(resource, namespace) && self.filter.matches(obj)
    }

    fn wants(&self, e: &Event) -> bool {
        self.wants_at(&e.resource, &e.namespace, &e.object)
    }

    /// A kept change, its object parsed again only when a selector must
    /// look at it.
    fn wants_past(&self, p: &Past) -> bool {
        self.place(&p.resource, &p.namespace)
            && (self.filter.is_empty() || {
                let line: Value =
                    serde_json::from_slice(&p.line).expect("a line the stand-in wrote");
                self.filter.matches(&line["object"])
            })
    }
}

fn watch_stream(store: &Arc<Store>, t: &Target, q: &BTreeMap<String, String>) -> Response {
    let filter = Filter::from_query(q);
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(1800);
    let since: Option<u64> = q
        .get("resourceVersion")
        .and_then(|s| s.parse().ok())
        .filter(|rv| *rv > 0);
    let sel = Arc::new(Selection {
        resource: t.resource.clone(),
        namespace: t.namespace.clone(),
        filter,
    });
    let wanted = {
        let sel = sel.clone();
        move |e: &Event| sel.wants(e)
    };
    let mut backlog: Vec<Bytes> = Vec::new();
    let (sub, start_rv) = {
        let mut inner = store.inner.lock().unwrap();
        // Subscribe under the lock: no event falls between backlog and live.
        let sub = inner.channel(&t.resource).subscribe();
        match since {
            Some(rv) if rv < inner.compacted_rv => {
                let gone = json!({"type": "ERROR", "object": {
                    "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "message": format!("too old resource version: {rv} ({})", inner.compacted_rv),
                    "reason": "Expired", "code": 410}});
                backlog.push(Bytes::from(format!("{gone}\n")));
                drop(inner);
                return stream_response(backlog, None, timeout, store.restart.subscribe());
            }
            Some(rv) => {
                for e in inner
                    .history
                    .iter()
                    .filter(|e| e.rv > rv && sel.wants_past(e))
                {
                    backlog.push(e.line.clone());
                }
            }
            None => {
                for (key, o) in inner.objects.get(t.resource.as_str()).into_iter().flatten() {
                    if sel.wants_at(&t.resource, &key.0, o) {
                        backlog.push(event_line("ADDED", o));
                    }
                }
            }
        }
        (sub, inner.rv)
    };
    // Events buffered in `sub` up to `start_rv` are already in the backlog.
    // Events already queued when one arrives go out in the same chunk (one
    // write for a burst; the bytes on the wire are the same lines).
    let live = futures::stream::unfold(
        (sub, start_rv, Box::new(wanted), false, store.clone()),
        |(mut rx, start, wanted, cut, store)| async move {
            if cut {
                return None;
            }
            let mut chunk: Vec<u8> = Vec::new();
            // Wait for the first wanted change, then take what is queued.
            loop {
                let next = if chunk.is_empty() {
                    rx.recv().await.map_err(|_| ())
                } else {
                    match rx.try_recv() {
                        Err(broadcast::error::TryRecvError::Empty) => break,
                        other => other.map_err(|_| ()),
                    }
                };
                match next {
                    Ok(e) => {
                        store.handed.fetch_add(1, Ordering::Relaxed);
                        if e.rv > start && wanted(&e) {
                            chunk.extend_from_slice(&e.line);
                        }
                    }
                    // A watcher too slow to keep up (lagged) or a closed
                    // channel: send what is gathered, then end (it re-watches).
                    Err(()) if chunk.is_empty() => return None,
                    Err(()) => return Some((Bytes::from(chunk), (rx, start, wanted, true, store))),
                }
            }
            Some((Bytes::from(chunk), (rx, start, wanted, false, store)))
        },
    );
    stream_response(
        backlog,
        Some(Box::pin(live)),
        timeout,
        store.restart.subscribe(),
    )
}

type LiveStream = std::pin::Pin<Box<dyn futures::Stream<Item = Bytes> + Send>>;

fn stream_response(
    backlog: Vec<Bytes>,
    live: Option<LiveStream>,
    timeout_s: u64,
    mut restart: watch::Receiver<u64>,
) -> Response {
    use futures::StreamExt;
    let (mut tx, rx) = futures::channel::mpsc::channel::<Result<Bytes, std::io::Error>>(256);
    tokio::spawn(async move {
        use futures::SinkExt;
        for line in backlog {
            if tx.send(Ok(line)).await.is_err() {
                return;
            }
        }
        let Some(mut live) = live else { return };
        let deadline = tokio::time::sleep(std::time::Duration::from_secs(timeout_s));
        tokio::pin!(deadline);
        restart.borrow_and_update();
        loop {
            tokio::select! {
                _ = &mut deadline => return,
                _ = restart.changed() => return,
                next = live.next() => match next {
                    Some(line) => if tx.send(Ok(line)).await.is_err() { return },
                    None => return,
                },
            }
        }
    });
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(Body::from_stream(rx))
        .unwrap()
}
