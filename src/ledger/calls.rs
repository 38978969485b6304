//! The gateway's call audit (调用审计) and model permissions. One row per
//! call through the token gateway: who called which model through which key
//! (a hash prefix, never the key), where it went, how it ended, how many
//! tokens and how long. No prompt or completion text is ever stored. The
//! call's tokens are billed as one token record (`source` =
//! `call:<request id>`), so a replayed or retried write neither loses nor
//! doubles a call.

use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};

use super::error::{LedgerError, Result};
use super::sql::{Cell, Val};
use super::store::{audit_tx, require_tenant, Ledger};
use super::types::{Month, Tier, TokenRecord};
use std::collections::BTreeMap;

/// One call through the gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallRecord {
    /// Unique per call (the gateway draws 128 random bits); also the
    /// `X-Request-Id` answered to the client.
    pub request_id: String,
    pub tenant: String,
    /// First 12 hex digits of the calling key's SHA-256 (the key's id).
    pub key_prefix: String,
    pub model: String,
    pub tier: Tier,
    /// The upstream's base URL (empty when the call never reached one).
    pub upstream: String,
    pub region: String,
    /// `chat/completions`, `completions` or `embeddings`.
    pub endpoint: String,
    /// HTTP status answered to the client (499: it went away mid-stream).
    pub status: u16,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    /// The tokens were counted by the gateway (tokenizing what was
    /// delivered), not reported by the upstream.
    pub estimated: bool,
    /// Milliseconds from the request to the first byte of generated output.
    pub ttft_ms: Option<i64>,
    pub latency_ms: i64,
    pub at: DateTime<Utc>,
}

/// Status recorded for a client that went away before the answer ended.
pub const STATUS_CLIENT_GONE: u16 = 499;

impl CallRecord {
    /// The call's token record, when it used any tokens.
    pub fn token_record(&self) -> Option<TokenRecord> {
        if self.prompt_tokens == 0 && self.completion_tokens == 0 {
            return None;
        }
        let start = Utc
            .timestamp_opt(self.at.timestamp(), 0)
            .single()
            .unwrap_or(self.at);
        let end_s = (self.at.timestamp_millis() + self.latency_ms.max(0) + 999) / 1000;
        let end = Utc
            .timestamp_opt(end_s.max(start.timestamp() + 1), 0)
            .single()
            .unwrap_or(start + chrono::Duration::seconds(1));
        Some(TokenRecord {
            source: format!("call:{}", self.request_id),
            tenant: self.tenant.clone(),
            service: format!("gateway/{}", self.model),
            model: self.model.clone(),
            region: self.region.clone(),
            tier: self.tier,
            start,
            end,
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.completion_tokens,
        })
    }
}

/// Which calls to list.
#[derive(Debug, Clone, Default)]
pub struct CallQuery {
    /// One tenant's calls only (`None`: every tenant's, for the admin).
    pub tenant: Option<String>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    /// Continue after this call (the `next` cursor of the previous page).
    pub after: Option<(i64, String)>,
    pub limit: i64,
}

const CALL_COLUMNS: &str = "request_id, tenant, key_prefix, model, tier, upstream, region, endpoint, status, prompt_tokens, completion_tokens, estimated, ttft_ms, latency_ms, at_ms";

fn call_from_row(r: &[Cell]) -> Result<CallRecord> {
    let tier = r[4].t();
    let tier = Tier::parse(&tier)
        .ok_or_else(|| LedgerError::Storage(format!("stored call tier `{tier}` unknown")))?;
    let at_ms = r[14].i();
    Ok(CallRecord {
        request_id: r[0].t(),
        tenant: r[1].t(),
        key_prefix: r[2].t(),
        model: r[3].t(),
        tier,
        upstream: r[5].t(),
        region: r[6].t(),
        endpoint: r[7].t(),
        status: u16::try_from(r[8].i()).unwrap_or(0),
        prompt_tokens: r[9].i(),
        completion_tokens: r[10].i(),
        estimated: r[11].i() != 0,
        ttft_ms: Some(r[12].i()).filter(|v| *v >= 0),
        latency_ms: r[13].i(),
        at: Utc
            .timestamp_millis_opt(at_ms)
            .single()
            .ok_or_else(|| LedgerError::Storage(format!("stored call time {at_ms} unreadable")))?,
    })
}

impl Ledger {
    /// Records calls: bills their tokens (idempotent per request id) and
    /// writes their audit rows (a call already stored is left as it is).
    /// Returns the audit rows newly written.
    pub fn record_calls(&self, calls: &[CallRecord]) -> Result<usize> {
        // One transaction (one commit) for the batch's token records and
        // its audit rows: the gateway waits on it before answering.
        let tokens: Vec<TokenRecord> = calls.iter().filter_map(CallRecord::token_record).collect();
        let tokens = super::ingest::meter_tokens(&tokens)?;
        let batch = (!tokens.is_empty()).then(|| super::ingest::Batch::of(Vec::new(), tokens));
        let (written, plan) = self.write(|tx| {
            let plan = batch.map(|b| super::ingest::ingest_in(tx, b)).transpose()?;
            let mut written = 0;
            for c in calls {
                written += tx.exec(
                    &format!(
                        "INSERT INTO calls ({CALL_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) \
                         ON CONFLICT (request_id) DO NOTHING"
                    ),
                    &[
                        Val::T(&c.request_id),
                        Val::T(&c.tenant),
                        Val::T(&c.key_prefix),
                        Val::T(&c.model),
                        Val::T(c.tier.as_str()),
                        Val::T(&c.upstream),
                        Val::T(&c.region),
                        Val::T(&c.endpoint),
                        Val::I(i64::from(c.status)),
                        Val::I(c.prompt_tokens),
                        Val::I(c.completion_tokens),
                        Val::I(i64::from(c.estimated)),
                        Val::I(c.ttft_ms.unwrap_or(-1)),
                        Val::I(c.latency_ms),
                        Val::I(c.at.timestamp_millis()),
                    ],
                )? as usize;
            }
            Ok((written, plan))
        })?;
        if let Some(plan) = &plan {
            self.observe_plan(plan)?;
        }
        Ok(written)
    }

    /// Calls in time order, one page (`q.limit` rows, at most 1000).
    pub fn calls(&self, q: &CallQuery) -> Result<Vec<CallRecord>> {
        let from = q.from.map(|t| t.timestamp_millis()).unwrap_or(i64::MIN);
        let to = q.to.map(|t| t.timestamp_millis()).unwrap_or(i64::MAX);
        let (after_ms, after_id) = q.after.clone().unwrap_or((i64::MIN, String::new()));
        let limit = q.limit.clamp(1, 1000);
        let rows = self.read(|tx| {
            let mut sql = format!(
                "SELECT {CALL_COLUMNS} FROM calls WHERE at_ms >= $1 AND at_ms < $2 \
                 AND (at_ms > $3 OR (at_ms = $3 AND request_id > $4))"
            );
            let mut params = vec![
                Val::I(from),
                Val::I(to),
                Val::I(after_ms),
                Val::T(&after_id),
            ];
            if let Some(t) = &q.tenant {
                sql.push_str(" AND tenant = $5");
                params.push(Val::T(t));
            }
            sql.push_str(&format!(" ORDER BY at_ms, request_id LIMIT {limit}"));
            tx.rows(&sql, &params)
        })?;
        rows.iter().map(|r| call_from_row(r)).collect()
    }

    /// Tokens (prompt + completion) `tenant` used in `month`, per tier.
    pub fn month_tokens_by_tier(&self, tenant: &str, month: Month) -> Result<BTreeMap<Tier, i64>> {
        let month = month.to_string();
        let rows = self.read(|tx| {
            tx.rows(
                "SELECT tier, CAST(SUM(prompt_tokens + completion_tokens) AS BIGINT) FROM tokens_rollup \
                 WHERE tenant = $1 AND month = $2 GROUP BY tier",
                &[Val::T(tenant), Val::T(&month)],
            )
        })?;
        Ok(rows
            .iter()
            .filter_map(|r| Some((Tier::parse(&r[0].t())?, r[1].i())))
            .collect())
    }

    /// The models `tenant` may call through the gateway: `None` = every
    /// shared model (the default), `Some(list)` = only those named.
    pub fn model_grants(&self, tenant: &str) -> Result<Option<Vec<String>>> {
        let rows = self.read(|tx| {
            tx.rows(
                "SELECT models FROM model_grants WHERE tenant = $1",
                &[Val::T(tenant)],
            )
        })?;
        match rows.first() {
            None => Ok(None),
            Some(r) => serde_json::from_str(&r[0].t())
                .map(Some)
                .map_err(|e| LedgerError::Storage(format!("stored model grants unreadable: {e}"))),
        }
    }

    /// Sets (or with `None` clears) the models `tenant` may call; audited.
    pub fn set_model_grants(
        &self,
        actor: &str,
        tenant: &str,
        models: Option<&[String]>,
    ) -> Result<()> {
        if let Some(list) = models {
            for (i, m) in list.iter().enumerate() {
                if m.is_empty() || m.len() > 200 || m.chars().any(char::is_control) {
                    return Err(LedgerError::invalid(
                        format!("models[{i}]"),
                        format!("`{m}` must be a model name of 1-200 printable characters"),
                    ));
                }
            }
        }
        let body = models.map(|m| serde_json::to_string(m).unwrap_or_else(|_| "[]".into()));
        self.write(|tx| {
            require_tenant(tx, tenant)?;
            tx.exec(
                "DELETE FROM model_grants WHERE tenant = $1",
                &[Val::T(tenant)],
            )?;
            if let Some(b) = &body {
                tx.exec(
                    "INSERT INTO model_grants (tenant, models) VALUES ($1, $2)",
                    &[Val::T(tenant), Val::T(b)],
                )?;
            }
            audit_tx(
                tx,
                actor,
                "models.grant",
                tenant,
                &serde_json::json!({ "models": models }),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(id: &str, tenant: &str, at_ms: i64, p: i64, c: i64) -> CallRecord {
        CallRecord {
            request_id: id.into(),
            tenant: tenant.into(),
            key_prefix: "abcdef012345".into(),
            model: "smol".into(),
            tier: Tier::Industry,
            upstream: "http://127.0.0.1:1".into(),
            region: "local".into(),
            endpoint: "chat/completions".into(),
            status: 200,
            prompt_tokens: p,
            completion_tokens: c,
            estimated: false,
            ttft_ms: Some(12),
            latency_ms: 1500,
            at: Utc.timestamp_millis_opt(at_ms).unwrap(),
        }
    }

    #[test]
    fn a_replayed_call_is_billed_and_listed_once() {
        let l = Ledger::open(":memory:").unwrap();
        l.ensure_rate_card("test").unwrap();
        l.create_tenant("admin", "a", None).unwrap();
        l.create_tenant("admin", "b", None).unwrap();
        let calls = [
            call("r1", "a", 1_800_000_000_000, 10, 5),
            call("r2", "b", 1_800_000_000_500, 3, 0),
            call("r3", "a", 1_800_000_001_000, 0, 0),
        ];
        assert_eq!(l.record_calls(&calls).unwrap(), 3);
        assert_eq!(l.record_calls(&calls).unwrap(), 0);
        let month = Month::of(calls[0].at);
        assert_eq!(l.month_use("a", month).unwrap().tokens, 15);
        let a = l
            .calls(&CallQuery {
                tenant: Some("a".into()),
                limit: 10,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(a, vec![calls[0].clone(), calls[2].clone()]);
        // paging: one at a time, after the previous row
        let first = l
            .calls(&CallQuery {
                limit: 1,
                ..Default::default()
            })
            .unwrap();
        let next = l
            .calls(&CallQuery {
                limit: 1,
                after: Some((first[0].at.timestamp_millis(), first[0].request_id.clone())),
                ..Default::default()
            })
            .unwrap();
        assert_eq!(next[0].request_id, "r2");
    }

    #[test]
    fn grants_default_to_none_and_can_be_set_and_cleared() {
        let l = Ledger::open(":memory:").unwrap();
        l.create_tenant("admin", "a", None).unwrap();
        assert_eq!(l.model_grants("a").unwrap(), None);
        l.set_model_grants("admin", "a", Some(&["smol".to_string()]))
            .unwrap();
        assert_eq!(l.model_grants("a").unwrap(), Some(vec!["smol".to_string()]));
        l.set_model_grants("admin", "a", None).unwrap();
        assert_eq!(l.model_grants("a").unwrap(), None);
        assert!(l.set_model_grants("admin", "nobody", None).is_err());
    }
}
