//! The token gateway's cost, side by side in one run: the same
//! non-streaming chat call sent to a fast local upstream directly and
//! through `zhisuan api`'s gateway (auth, permission, limits, routing,
//! usage parsing, the call's record and its ledger write), one connection
//! at a time for latency, then many at once for throughput. Everything
//! runs on this machine. Prints one JSON object.
//!
//! `cargo bench --bench gateway` (add `-- --seconds N` to change the
//! throughput phase, default 5 s each).

use zhisuan::demo::model as upstream;

#[path = "../tests/support/standalone.rs"]
mod standalone;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::json;

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

const ADMIN: &str = "bench-admin-key-0123456789abcdef";

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(256)
        .build_http()
}

async fn call(c: &HttpClient, url: &str, key: Option<&str>, body: &Bytes) -> u16 {
    let mut req = hyper::Request::post(url).header("content-type", "application/json");
    if let Some(k) = key {
        req = req.header("authorization", format!("Bearer {k}"));
    }
    let resp = c
        .request(req.body(Full::new(body.clone())).unwrap())
        .await
        .expect("request");
    let status = resp.status().as_u16();
    resp.into_body().collect().await.expect("body");
    status
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// `rounds` alternating rounds of `n` sequential calls to each target;
/// returns (direct, gateway) latencies in ms, sorted.
async fn latency(
    c: &HttpClient,
    direct: &str,
    gateway: &str,
    key: &str,
    body: &Bytes,
    rounds: usize,
    n: usize,
) -> (Vec<f64>, Vec<f64>) {
    let (mut d, mut g) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        for (url, k, out) in [(direct, None, &mut d), (gateway, Some(key), &mut g)] {
            for _ in 0..n {
                let t = Instant::now();
                assert_eq!(call(c, url, k, body).await, 200);
                out.push(t.elapsed().as_secs_f64() * 1000.0);
            }
        }
    }
    d.sort_by(f64::total_cmp);
    g.sort_by(f64::total_cmp);
    (d, g)
}

/// Calls per second with `conns` connections busy for `secs`, calls done, calls failed.
async fn throughput(
    url: &str,
    key: Option<&str>,
    body: &Bytes,
    conns: usize,
    secs: f64,
) -> (f64, u64, u64) {
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + Duration::from_secs_f64(secs);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (c, url, key, body) = (
            client(),
            url.to_string(),
            key.map(str::to_string),
            body.clone(),
        );
        let (done, failed) = (done.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < until {
                if call(&c, &url, key.as_deref(), &body).await == 200 {
                    done.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let n = done.load(Ordering::Relaxed);
    (
        n as f64 / start.elapsed().as_secs_f64(),
        n,
        failed.load(Ordering::Relaxed),
    )
}

/// One gateway (its own ledger) in front of the upstream, with a tenant.
struct Gateway {
    addr: SocketAddr,
    key: String,
    state: zhisuan::api::ApiState,
    ledger: zhisuan::ledger::Ledger,
}

impl Gateway {
    async fn start(db: &str, up: SocketAddr, durable_answers: bool) -> Gateway {
        let config = zhisuan::api::ApiConfig {
            rate_limit: zhisuan::api::RateLimit {
                per_second: 1e9,
                burst: 1e9,
            },
            gateway: zhisuan::api::gateway::GatewayConfig {
                upstreams: vec![format!("smol=http://{up}")],
                tiers: vec![],
                tokens_per_minute: 0,
                durable_answers,
                ..Default::default()
            },
            ..zhisuan::api::ApiConfig::with_admin_key(ADMIN)
        };
        let (addr, state) = standalone::serve_here(config, db).await;
        let created = client()
            .request(
                hyper::Request::post(format!("http://{addr}/v1/tenants"))
                    .header("content-type", "application/json")
                    .header("authorization", format!("Bearer {ADMIN}"))
                    .body(Full::new(Bytes::from(json!({"name": "bench"}).to_string())))
                    .unwrap(),
            )
            .await
            .unwrap();
        let body: serde_json::Value =
            serde_json::from_slice(&created.into_body().collect().await.unwrap().to_bytes())
                .unwrap();
        Gateway {
            addr,
            key: body["api_key"].as_str().unwrap().to_string(),
            ledger: state.ledger().clone(),
            state,
        }
    }
}

fn main() {
    let secs: f64 = std::env::args()
        .skip_while(|a| a != "--seconds")
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(5.0);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    rt.block_on(async move {
        let up: SocketAddr = upstream::start(upstream::Upstream {
            usage_in_stream: true,
            word_delay: Duration::ZERO,
            seen: Arc::new(Mutex::new(upstream::Seen::default())),
        })
        .await
        .unwrap();
        let c = client();
        let req = Bytes::from(
            json!({"model": "smol", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 5}).to_string(),
        );
        let direct = format!("http://{up}/v1/chat/completions");
        let conns = 32;
        let mut modes = serde_json::Map::new();
        let mut direct_figures = json!(null);
        // The default (durable answers) and the faster mode, side by side.
        for durable in [true, false] {
            let db = dir.path().join(format!("ledger-{durable}.db")).to_str().unwrap().to_string();
            let gw = Gateway::start(&db, up, durable).await;
            let gateway = format!("http://{}/v1/chat/completions", gw.addr);
            // warm up both paths (connections, caches)
            latency(&c, &direct, &gateway, &gw.key, &req, 1, 200).await;
            let (d, g) = latency(&c, &direct, &gateway, &gw.key, &req, 10, 200).await;
            let (direct_rps, _, direct_failed) = throughput(&direct, None, &req, conns, secs).await;
            let (gateway_rps, gateway_calls, gateway_failed) =
                throughput(&gateway, Some(&gw.key), &req, conns, secs).await;
            // 200 + 2,000 latency calls before
            let sent = gateway_calls + 2_200;
            gw.state.gateway().flush().await;
            let ledger = gw.ledger.clone();
            let recorded = tokio::task::spawn_blocking(move || {
                ledger.month_use("bench", zhisuan::ledger::Month::of(chrono::Utc::now())).unwrap().tokens
            })
            .await
            .unwrap();
            direct_figures = json!({"p50": pct(&d, 0.5), "p99": pct(&d, 0.99), "n": d.len(), "rps": direct_rps});
            modes.insert(
                if durable { "durable_answers" } else { "answers_before_write" }.to_string(),
                json!({
                    "latency_ms": {
                        "gateway": {"p50": pct(&g, 0.5), "p99": pct(&g, 0.99), "n": g.len()},
                        "direct_same_run": {"p50": pct(&d, 0.5), "p99": pct(&d, 0.99)},
                        "added_p50": pct(&g, 0.5) - pct(&d, 0.5),
                        "added_p99": pct(&g, 0.99) - pct(&d, 0.99),
                    },
                    "throughput_rps": {
                        "connections": conns,
                        "seconds": secs,
                        "direct": direct_rps,
                        "gateway": gateway_rps,
                        "failed": direct_failed + gateway_failed,
                    },
                    // every call's tokens reached the ledger: 2 prompt + 5 completion each
                    "gateway_calls": sent,
                    "ledger_tokens": recorded,
                    "ledger_tokens_expected": sent * 7,
                }),
            );
        }
        let out = json!({
            "machine_cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            "direct_last": direct_figures,
            "modes": modes,
        });
        println!("{}", serde_json::to_string_pretty(&out).unwrap());
    });
}
