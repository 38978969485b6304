//! A real Prometheus (Debian `prometheus`) on loopback for tests: scrapes one
//! target every second, answers PromQL through its HTTP API, stops on drop.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Prometheus {
    child: Child,
    pub addr: String,
    _dir: tempfile::TempDir,
}

/// The Prometheus binary, or None (the caller skips, or fails under CI).
pub fn binary() -> Option<PathBuf> {
    let candidates = [
        std::env::var("ZHISUAN_PROMETHEUS").ok().map(PathBuf::from),
        Some(PathBuf::from("/usr/bin/prometheus")),
        Some(PathBuf::from("/usr/local/bin/prometheus")),
    ];
    candidates.into_iter().flatten().find(|p| p.exists())
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Prometheus {
    /// Starts Prometheus scraping `target` (host:port, path /metrics) every second.
    pub fn start(bin: &std::path::Path, target: &str) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: zhisuan\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new(bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        let prom = Prometheus {
            child,
            addr,
            _dir: dir,
        };
        prom.wait_until(Duration::from_secs(60), "Prometheus ready", || {
            reqwest::blocking::get(format!("http://{}/-/ready", prom.addr))
                .is_ok_and(|r| r.status().is_success())
        });
        prom
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// Polls `ready` every 250 ms until it holds; panics with `what` after `limit`.
    pub fn wait_until(&self, limit: Duration, what: &str, mut ready: impl FnMut() -> bool) {
        let start = Instant::now();
        while !ready() {
            assert!(
                start.elapsed() < limit,
                "timed out after {limit:?} waiting for {what}; prometheus log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// An instant query; returns the result vector (or panics on a PromQL error).
    pub fn query(&self, expr: &str) -> Vec<serde_json::Value> {
        let client = reqwest::blocking::Client::new();
        let resp = client
            .get(format!(
                "http://{}/api/v1/query?query={}",
                self.addr,
                percent_encode(expr)
            ))
            .send()
            .unwrap_or_else(|e| panic!("query {expr}: {e}"));
        let body: serde_json::Value = resp.json().unwrap();
        assert_eq!(body["status"], "success", "query {expr} failed: {body}");
        match body["data"]["resultType"].as_str() {
            Some("vector") | Some("matrix") => body["data"]["result"].as_array().unwrap().clone(),
            Some("scalar") => vec![body["data"]["result"].clone()],
            other => panic!("query {expr}: unexpected result type {other:?}"),
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Percent-encodes a query-string value (everything but unreserved characters).
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
