//! Token counting for inference services: scrape each service's Prometheus
//! endpoint (vLLM-style cumulative counters, names configurable), turn the
//! counter deltas into token records and ingest them into the ledger.
//!
//! - observe: [`super::promtext::scrape`] of every target, concurrently;
//! - plan: [`crate::ledger::TokenMeter`] (pure) turns successive readings
//!   into deltas, a counter drop counting as a restart;
//! - act: [`crate::ledger::Ledger::ingest`] (idempotent).
//!
//! Scrape windows are aligned to the interval grid: a round at tick `t`
//! (a multiple of the interval, unix seconds) reports each target's tokens
//! for `[previous successful tick, t)`, and the record id derives from the
//! target's source and that window. So ids are deterministic, a failed
//! scrape simply widens the next window, and a replayed round is a no-op.
//! A target's first successful scrape only sets its baseline: tokens served
//! before it are not attributed to any window (the counter's earlier part was
//! counted by whoever scraped it before, e.g. a previous controller).

use super::promtext::{self, Exposition};
use crate::ledger::{Ledger, LedgerError, Tier, TokenCounterNames, TokenMeter, TokenRecord};
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::time::Duration;
use tokio::sync::watch;

/// One inference endpoint to count tokens for (from an InferenceService's
/// metrics endpoints: one target per serving pod).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenTarget {
    /// Prometheus endpoint, e.g. `http://10.0.3.7:8000/metrics`.
    pub url: String,
    /// Stable identity of the scraped process, e.g. the pod uid: with the
    /// window it forms the record id. One counter set per source.
    pub source: String,
    pub tenant: String,
    /// The InferenceService, `namespace/name`.
    pub service: String,
    /// Served model name.
    pub model: String,
    pub region: String,
    pub tier: Tier,
}

/// Settings of the scrape loop.
#[derive(Debug, Clone)]
pub struct TokenScrapeConfig {
    /// Scrape period; windows are aligned to multiples of it (at least 1 s).
    pub interval: Duration,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Counter names (defaults: `vllm:prompt_tokens_total`, `vllm:generation_tokens_total`).
    pub names: TokenCounterNames,
}

impl Default for TokenScrapeConfig {
    fn default() -> Self {
        TokenScrapeConfig {
            interval: Duration::from_secs(15),
            timeout: Duration::from_secs(5),
            names: TokenCounterNames::default(),
        }
    }
}

/// What one round did.
#[derive(Debug, Default)]
pub struct RoundReport {
    /// Records built from this round's deltas (also the ones with zero tokens
    /// are skipped: an idle window writes nothing).
    pub records: Vec<TokenRecord>,
    /// Targets whose scrape failed: (source, error). Their next successful
    /// scrape covers the missed windows.
    pub failed: Vec<(String, String)>,
}

/// Per-target state: the tick of the last successful scrape.
#[derive(Debug, Default)]
struct TargetState {
    last_tick: Option<i64>,
}

/// Scrapes a set of targets round by round and keeps their counter state.
pub struct TokenScraper {
    client: reqwest::Client,
    /// The two counters metered; every other sample is skipped unread.
    names: TokenCounterNames,
    meter: TokenMeter,
    state: HashMap<String, TargetState>,
}

/// Renders a sample's labels as a stable key (sorted), so one series is
/// recognised across scrapes whatever the label order.
fn series_key(labels: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = labels.iter().collect();
    sorted.sort();
    let mut out = String::from("{");
    for (k, v) in sorted {
        out.push_str(k);
        out.push_str("=\"");
        out.push_str(v);
        out.push_str("\",");
    }
    out.push('}');
    out
}

impl TokenScraper {
    pub fn new(config: &TokenScrapeConfig) -> Result<TokenScraper, reqwest::Error> {
        Ok(TokenScraper {
            client: reqwest::Client::builder().timeout(config.timeout).build()?,
            names: config.names.clone(),
            meter: TokenMeter::new(config.names.clone()),
            state: HashMap::new(),
        })
    }

    /// Scrapes every target (concurrently) at `tick` and returns the token
    /// records of the windows ending at `tick`. Targets no longer listed are
    /// forgotten (their pod is gone).
    pub async fn round(&mut self, targets: &[TokenTarget], tick: DateTime<Utc>) -> RoundReport {
        self.state
            .retain(|source, _| targets.iter().any(|t| &t.source == source));
        let live: Vec<&str> = targets.iter().map(|t| t.source.as_str()).collect();
        self.meter.retain_sources(&live);
        let client = &self.client;
        let scrapes = futures::future::join_all(
            targets
                .iter()
                .map(|t| async move { promtext::scrape(client, &t.url).await }),
        )
        .await;
        let mut report = RoundReport::default();
        for (target, scraped) in targets.iter().zip(scrapes) {
            match scraped {
                Ok(expo) => {
                    if let Some(r) = self.observe(target, &expo, tick) {
                        report.records.push(r);
                    }
                }
                Err(e) => report.failed.push((target.source.clone(), e.to_string())),
            }
        }
        report
    }

    /// Feeds one successful scrape; returns the window's record when it has tokens.
    fn observe(
        &mut self,
        target: &TokenTarget,
        expo: &Exposition,
        tick: DateTime<Utc>,
    ) -> Option<TokenRecord> {
        let tick_s = tick.timestamp();
        let state = self.state.entry(target.source.clone()).or_default();
        if state.last_tick.is_some_and(|last| last >= tick_s) {
            // No window ends here (the clock did not advance): leave the
            // baseline where it is so the tokens go into the next window.
            return None;
        }
        // Series keys only for the two metered counters (an exporter serves
        // hundreds of other lines: histograms, cache stats…).
        let names = &self.names;
        let counters: Vec<(&str, String, f64)> = expo
            .samples
            .iter()
            .filter(|s| s.name == names.prompt || s.name == names.completion)
            .map(|s| (s.name.as_str(), series_key(&s.labels), s.value))
            .collect();
        let delta = self.meter.observe(
            &target.source,
            counters.iter().map(|(n, k, v)| (*n, k.as_str(), *v)),
        );
        let start = state.last_tick.replace(tick_s)?;
        if delta.prompt == 0 && delta.completion == 0 {
            return None;
        }
        Some(TokenRecord {
            source: target.source.clone(),
            tenant: target.tenant.clone(),
            service: target.service.clone(),
            model: target.model.clone(),
            region: target.region.clone(),
            tier: target.tier,
            start: DateTime::from_timestamp(start, 0).unwrap_or_default(),
            end: tick,
            prompt_tokens: delta.prompt.min(i64::MAX as u64) as i64,
            completion_tokens: delta.completion.min(i64::MAX as u64) as i64,
        })
    }
}

/// The grid tick at or before `now` for a period of `interval_s` seconds.
pub fn tick_at(now: DateTime<Utc>, interval_s: i64) -> DateTime<Utc> {
    let s = now.timestamp();
    DateTime::from_timestamp(s - s.rem_euclid(interval_s.max(1)), 0).unwrap_or(now)
}

/// Ingests a round's records (blocking call on the blocking pool). A record
/// the ledger rejects as invalid (e.g. its tenant is unknown) is dropped with
/// an error log, so it cannot block the others; a storage error returns the
/// records for a retry in the next round.
pub async fn ingest_round(
    ledger: &Ledger,
    records: Vec<TokenRecord>,
) -> Result<usize, (Vec<TokenRecord>, LedgerError)> {
    if records.is_empty() {
        return Ok(0);
    }
    let ledger = ledger.clone();
    let outcome = tokio::task::spawn_blocking(move || {
        match ledger.ingest(&[], &records) {
            Ok(r) => Ok(r.tokens_new),
            Err(LedgerError::Storage(e)) => Err((records, LedgerError::Storage(e))),
            Err(_) => {
                // One bad record rejects its batch: ingest one by one and
                // drop only the bad ones.
                let mut stored = 0;
                for r in &records {
                    match ledger.ingest(&[], std::slice::from_ref(r)) {
                        Ok(rep) => stored += rep.tokens_new,
                        Err(e @ LedgerError::Storage(_)) => {
                            return Err((records.clone(), e));
                        }
                        Err(e) => tracing::error!(
                            source = %r.source, service = %r.service, tenant = %r.tenant,
                            error = %e, "token record rejected by the ledger; dropped"
                        ),
                    }
                }
                Ok(stored)
            }
        }
    })
    .await;
    outcome.unwrap_or_else(|e| Err((vec![], LedgerError::Storage(format!("ingest task: {e}")))))
}

/// Runs the token loop until `shutdown` resolves: every `interval` (aligned
/// to the grid) it scrapes the current targets (`targets` is updated by the
/// controller as InferenceServices change) and ingests the deltas.
pub async fn run_token_loop(
    ledger: Ledger,
    targets: watch::Receiver<Vec<TokenTarget>>,
    config: TokenScrapeConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let interval_s = config.interval.as_secs().max(1) as i64;
    let mut scraper = TokenScraper::new(&config)?;
    let mut retry: Vec<TokenRecord> = Vec::new();
    tokio::pin!(shutdown);
    loop {
        // Sleep to the next grid tick.
        let now = Utc::now();
        let next = tick_at(now, interval_s) + chrono::Duration::seconds(interval_s);
        let wait = (next - now).to_std().unwrap_or_default();
        tokio::select! {
            _ = &mut shutdown => return Ok(()),
            _ = tokio::time::sleep(wait) => {}
        }
        let current = targets.borrow().clone();
        let round = scraper
            .round(&current, tick_at(Utc::now(), interval_s))
            .await;
        for (source, error) in &round.failed {
            tracing::warn!(%source, %error, "token scrape failed; the next scrape covers the window");
        }
        let mut records = std::mem::take(&mut retry);
        records.extend(round.records);
        if let Err((back, e)) = ingest_round(&ledger, records).await {
            tracing::warn!(error = %e, pending = back.len(), "token ingestion failed; retrying next round");
            retry = back;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::{extract::State, routing::get, Router};
    use chrono::TimeZone;
    use std::sync::{Arc, Mutex};

    /// A vLLM stand-in: serves whatever exposition the test sets.
    async fn exporter() -> (String, Arc<Mutex<String>>) {
        let body = Arc::new(Mutex::new(String::new()));
        let app = Router::new()
            .route(
                "/metrics",
                get(|State(b): State<Arc<Mutex<String>>>| async move {
                    let text = b.lock().unwrap().clone();
                    if text.is_empty() {
                        Err(axum::http::StatusCode::SERVICE_UNAVAILABLE)
                    } else {
                        Ok(text)
                    }
                }),
            )
            .with_state(body.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (format!("http://{addr}/metrics"), body)
    }

    fn vllm(prompt: f64, generation: f64) -> String {
        format!(
            "# TYPE vllm:prompt_tokens_total counter\n\
             vllm:prompt_tokens_total{{model_name=\"qwen-72b\"}} {prompt}\n\
             # TYPE vllm:generation_tokens_total counter\n\
             vllm:generation_tokens_total{{model_name=\"qwen-72b\"}} {generation}\n\
             vllm:num_requests_running{{model_name=\"qwen-72b\"}} 3\n"
        )
    }

    fn target(url: &str, source: &str, tenant: &str) -> TokenTarget {
        TokenTarget {
            url: url.into(),
            source: source.into(),
            tenant: tenant.into(),
            service: "ai/chat".into(),
            model: "qwen-72b".into(),
            region: "beijing".into(),
            tier: Tier::Industry,
        }
    }

    fn ledger() -> Ledger {
        let l = Ledger::open(":memory:").unwrap();
        l.ensure_rate_card("t").unwrap();
        l.create_tenant("t", "acme", None).unwrap();
        l
    }

    fn at(minute: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 5, 0, 0, 0).unwrap() + chrono::Duration::minutes(minute)
    }

    #[tokio::test]
    async fn deltas_with_a_reset_and_a_failed_scrape_become_exact_idempotent_records() {
        let (url, body) = exporter().await;
        let l = ledger();
        let cfg = TokenScrapeConfig::default();
        let mut s = TokenScraper::new(&cfg).unwrap();
        let targets = vec![target(&url, "pod-a", "acme")];

        // Baseline: nothing attributed yet.
        *body.lock().unwrap() = vllm(1000.0, 400.0);
        let r = s.round(&targets, at(0)).await;
        assert!(r.records.is_empty() && r.failed.is_empty());

        // +500 prompt, +100 completion.
        *body.lock().unwrap() = vllm(1500.0, 500.0);
        let r1 = s.round(&targets, at(1)).await;
        assert_eq!(r1.records.len(), 1);
        let rec = &r1.records[0];
        assert_eq!((rec.prompt_tokens, rec.completion_tokens), (500, 100));
        assert_eq!((rec.start, rec.end), (at(0), at(1)));

        // The exporter is down at minute 2: the failure is reported, nothing lost.
        body.lock().unwrap().clear();
        let r2 = s.round(&targets, at(2)).await;
        assert!(r2.records.is_empty());
        assert_eq!(r2.failed.len(), 1);
        assert!(r2.failed[0].1.contains("503"), "{:?}", r2.failed);

        // The server restarted (counters from zero) and served 70 + 30 more:
        // the window [1, 3) covers the missed scrape and counts the reset.
        *body.lock().unwrap() = vllm(70.0, 30.0);
        let r3 = s.round(&targets, at(3)).await;
        assert_eq!(r3.records.len(), 1);
        let rec3 = &r3.records[0];
        assert_eq!((rec3.prompt_tokens, rec3.completion_tokens), (70, 30));
        assert_eq!((rec3.start, rec3.end), (at(1), at(3)));

        let stored = ingest_round(&l, r1.records.clone()).await.unwrap()
            + ingest_round(&l, r3.records.clone()).await.unwrap();
        assert_eq!(stored, 2);
        // Replaying the same rounds (a restarted loop, a second replica) adds nothing.
        let again = ingest_round(&l, [r1.records, r3.records].concat())
            .await
            .unwrap();
        assert_eq!(again, 0);
        let st = l
            .statement_as_of(
                "acme",
                crate::ledger::Month::parse("2026-11").unwrap(),
                at(10),
            )
            .unwrap();
        assert_eq!(st.token_records, 2);
        assert_eq!(
            (st.tokens[0].prompt_tokens, st.tokens[0].completion_tokens),
            (570, 130)
        );
    }

    #[tokio::test]
    async fn a_round_at_a_tick_already_scraped_keeps_its_tokens_for_the_next_window() {
        let (url, body) = exporter().await;
        let mut s = TokenScraper::new(&TokenScrapeConfig::default()).unwrap();
        let targets = vec![target(&url, "pod-a", "acme")];
        *body.lock().unwrap() = vllm(100.0, 10.0);
        s.round(&targets, at(0)).await;
        *body.lock().unwrap() = vllm(150.0, 20.0);
        s.round(&targets, at(1)).await;
        // The clock did not advance (or stepped back): no window ends here.
        *body.lock().unwrap() = vllm(180.0, 25.0);
        assert!(s.round(&targets, at(1)).await.records.is_empty());
        assert!(s.round(&targets, at(0)).await.records.is_empty());
        // The next window has every token served since minute 1.
        *body.lock().unwrap() = vllm(200.0, 30.0);
        let r = s.round(&targets, at(2)).await;
        let rec = &r.records[0];
        assert_eq!((rec.prompt_tokens, rec.completion_tokens), (50, 10));
        assert_eq!((rec.start, rec.end), (at(1), at(2)));
    }

    #[tokio::test]
    async fn a_bad_target_is_dropped_without_blocking_the_others() {
        let (url, body) = exporter().await;
        let l = ledger();
        let mut s = TokenScraper::new(&TokenScrapeConfig::default()).unwrap();
        let targets = vec![
            target(&url, "pod-a", "acme"),
            target(&url, "pod-b", "nobody"),
        ];
        *body.lock().unwrap() = vllm(10.0, 1.0);
        s.round(&targets, at(0)).await;
        *body.lock().unwrap() = vllm(20.0, 2.0);
        let r = s.round(&targets, at(1)).await;
        assert_eq!(r.records.len(), 2);
        // "nobody" is not a tenant: its record is dropped, acme's is stored.
        assert_eq!(ingest_round(&l, r.records).await.unwrap(), 1);
        // A target that disappears is forgotten: back later, it starts a new baseline.
        s.round(&targets[..1], at(2)).await;
        *body.lock().unwrap() = vllm(25.0, 3.0);
        let r = s.round(&targets, at(3)).await;
        assert_eq!(r.records.len(), 1);
        assert_eq!(r.records[0].source, "pod-a");
    }

    #[tokio::test]
    async fn counter_names_are_configurable() {
        let (url, body) = exporter().await;
        let cfg = TokenScrapeConfig {
            names: TokenCounterNames {
                prompt: "sglang:prompt_tokens_total".into(),
                completion: "sglang:generation_tokens_total".into(),
            },
            ..TokenScrapeConfig::default()
        };
        let mut s = TokenScraper::new(&cfg).unwrap();
        let targets = vec![target(&url, "pod-a", "acme")];
        let sglang = |p: u32, g: u32| {
            format!(
                "sglang:prompt_tokens_total {p}\nsglang:generation_tokens_total {g}\n{}",
                vllm(1e6, 1e6)
            )
        };
        *body.lock().unwrap() = sglang(5, 1);
        s.round(&targets, at(0)).await;
        *body.lock().unwrap() = sglang(9, 4);
        let r = s.round(&targets, at(1)).await;
        assert_eq!(
            (r.records[0].prompt_tokens, r.records[0].completion_tokens),
            (4, 3)
        );
    }

    #[tokio::test]
    async fn the_loop_scrapes_and_ingests_until_shut_down() {
        let (url, body) = exporter().await;
        let l = ledger();
        *body.lock().unwrap() = vllm(0.0, 0.0);
        let (tx, rx) = watch::channel(vec![target(&url, "pod-a", "acme")]);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let cfg = TokenScrapeConfig {
            interval: Duration::from_secs(1),
            ..TokenScrapeConfig::default()
        };
        let task = tokio::spawn(run_token_loop(l.clone(), rx, cfg, async {
            let _ = stop_rx.await;
        }));
        // Serve growing counters until the ledger holds tokens (bounded wait).
        let month = crate::ledger::Month::of(Utc::now());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let mut served = 0.0;
        loop {
            served += 100.0;
            *body.lock().unwrap() = vllm(served, served / 2.0);
            let use_ = l.month_use("acme", month).unwrap();
            if use_.tokens > 0 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no tokens ingested in 20 s"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        drop(tx);
        stop_tx.send(()).unwrap();
        task.await.unwrap().unwrap();
    }
}
