//! Writes calls to the ledger off the request path: calls queue in memory
//! and one task writes them in batches (the audit rows and the token
//! records, idempotent per request id). A failed write is retried with the
//! same batch — never dropped — and the tokens still queued count towards
//! the tenant's monthly limit until they are written.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::ledger::{CallRecord, Ledger, Tier};

/// Most calls written in one batch.
const BATCH: usize = 2_000;

enum Msg {
    /// A call, and who waits until it is written (if anyone).
    Call(Box<CallRecord>, Option<oneshot::Sender<()>>),
    /// Reply once everything queued before it is written.
    Flush(oneshot::Sender<()>),
}

/// Told the tenants of each batch once it is written.
pub type OnWritten = Arc<dyn Fn(&[String]) + Send + Sync>;

/// The queue of calls not yet in the ledger.
pub struct Recorder {
    ledger: Ledger,
    tx: OnceLock<mpsc::UnboundedSender<Msg>>,
    /// (tenant, tier) → tokens queued, not yet written.
    queued: Arc<Mutex<HashMap<(String, Tier), i64>>>,
    /// Called after each written batch with the tenants it held.
    on_written: OnWritten,
    failures: prometheus::IntCounter,
    backlog: prometheus::IntGauge,
}

impl Recorder {
    pub fn new(
        ledger: Ledger,
        on_written: OnWritten,
        failures: prometheus::IntCounter,
        backlog: prometheus::IntGauge,
    ) -> Self {
        Recorder {
            ledger,
            tx: OnceLock::new(),
            queued: Arc::default(),
            on_written,
            failures,
            backlog,
        }
    }

    /// The writer task, started on first use (on the caller's runtime).
    fn sender(&self) -> &mpsc::UnboundedSender<Msg> {
        self.tx.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(write_loop(
                rx,
                self.ledger.clone(),
                self.queued.clone(),
                self.on_written.clone(),
                self.failures.clone(),
                self.backlog.clone(),
            ));
            tx
        })
    }

    /// Queues one call.
    pub fn record(&self, call: CallRecord) {
        self.queue(call, None);
    }

    /// Queues one call and waits until it is in the ledger (written with
    /// whatever else is queued: one write serves many waiters), at most
    /// `patience`; past it the call stays queued and is written later.
    /// `false` when the wait ran out.
    pub async fn record_durably(&self, call: CallRecord, patience: Duration) -> bool {
        let (tx, rx) = oneshot::channel();
        self.queue(call, Some(tx));
        matches!(tokio::time::timeout(patience, rx).await, Ok(Ok(())))
    }

    fn queue(&self, call: CallRecord, written: Option<oneshot::Sender<()>>) {
        let tokens = call.prompt_tokens.saturating_add(call.completion_tokens);
        if tokens > 0 {
            *self
                .queued
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry((call.tenant.clone(), call.tier))
                .or_default() += tokens;
        }
        self.backlog.inc();
        if self
            .sender()
            .send(Msg::Call(Box::new(call), written))
            .is_err()
        {
            tracing::error!("gateway call recorder stopped; a call was not recorded");
        }
    }

    /// Tokens of `tenant` queued and not yet written, per tier.
    pub fn queued(&self, tenant: &str) -> HashMap<Tier, i64> {
        self.queued
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|((t, _), _)| t == tenant)
            .map(|((_, tier), n)| (*tier, *n))
            .collect()
    }

    /// Waits until every call queued before now is in the ledger.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.sender().send(Msg::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

async fn write_loop(
    mut rx: mpsc::UnboundedReceiver<Msg>,
    ledger: Ledger,
    queued: Arc<Mutex<HashMap<(String, Tier), i64>>>,
    on_written: OnWritten,
    failures: prometheus::IntCounter,
    backlog: prometheus::IntGauge,
) {
    let mut msgs = Vec::with_capacity(BATCH);
    let mut batch: Vec<CallRecord> = Vec::with_capacity(BATCH);
    let mut waiters = Vec::new();
    loop {
        if rx.recv_many(&mut msgs, BATCH).await == 0 {
            return;
        }
        for m in msgs.drain(..) {
            match m {
                Msg::Call(c, w) => {
                    batch.push(*c);
                    waiters.extend(w);
                }
                Msg::Flush(w) => waiters.push(w),
            }
        }
        let mut backoff = Duration::from_millis(200);
        while !batch.is_empty() {
            let calls = std::mem::take(&mut batch);
            let l = ledger.clone();
            let result = tokio::task::spawn_blocking(move || {
                let r = l.record_calls(&calls);
                (calls, r)
            })
            .await;
            match result {
                Ok((calls, Ok(_))) => {
                    settle(&queued, &calls);
                    backlog.sub(calls.len() as i64);
                    let mut tenants: Vec<String> = calls.iter().map(|c| c.tenant.clone()).collect();
                    tenants.sort();
                    tenants.dedup();
                    on_written(&tenants);
                }
                Ok((calls, Err(e))) => {
                    failures.inc();
                    tracing::warn!(error = %e, calls = calls.len(), retry_in_ms = backoff.as_millis() as u64,
                        "writing gateway calls to the ledger failed; retrying the same calls");
                    batch = calls;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
                Err(e) => {
                    failures.inc();
                    tracing::error!(error = %e, "gateway call writer panicked; its calls are lost");
                }
            }
        }
        for w in waiters.drain(..) {
            let _ = w.send(());
        }
    }
}

/// Takes written calls' tokens off the queued counts.
fn settle(queued: &Mutex<HashMap<(String, Tier), i64>>, calls: &[CallRecord]) {
    let mut q = queued.lock().unwrap_or_else(|p| p.into_inner());
    for c in calls {
        let key = (c.tenant.clone(), c.tier);
        if let Some(n) = q.get_mut(&key) {
            *n -= c.prompt_tokens.saturating_add(c.completion_tokens);
            if *n <= 0 {
                q.remove(&key);
            }
        }
    }
}
