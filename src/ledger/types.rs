//! Plain data of the ledger: records as callers send them, validated and
//! metered forms, vouchers, tenants, quotas, audit events, months.

use super::error::{LedgerError, Result};
use super::money::{mul_div_floor, mul_div_half_up, Fen, BP_ONE};
use chrono::{DateTime, Datelike, NaiveDate, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;

/// Joules in one kWh.
pub const J_PER_KWH: i64 = 3_600_000;

/// What a charge is for; vouchers may be limited to some kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChargeKind {
    /// GPU time (per GPU-hour by model and region).
    Gpu,
    /// Facility energy, when the operator bills energy separately (per kWh).
    Energy,
    /// Inference tokens (per million tokens by tier, prompt / completion).
    Tokens,
}

impl ChargeKind {
    pub const ALL: [ChargeKind; 3] = [ChargeKind::Gpu, ChargeKind::Energy, ChargeKind::Tokens];

    pub fn as_str(self) -> &'static str {
        match self {
            ChargeKind::Gpu => "gpu",
            ChargeKind::Energy => "energy",
            ChargeKind::Tokens => "tokens",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// Token price tiers: basic (基础词元), industry (行业词元), high-value (高价值词元).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    Basic,
    Industry,
    HighValue,
}

impl Tier {
    pub const ALL: [Tier; 3] = [Tier::Basic, Tier::Industry, Tier::HighValue];

    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Basic => "basic",
            Tier::Industry => "industry",
            Tier::HighValue => "high_value",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Deterministic record id: the first 16 bytes of SHA-256 over the parts, hex.
/// Same source and interval → same id, so replays and failovers never double-count.
pub fn record_id(kind: &str, source: &str, start: i64, end: i64) -> String {
    let mut h = Sha256::new();
    h.update(kind.as_bytes());
    h.update([0]);
    h.update(source.as_bytes());
    h.update([0]);
    h.update(start.to_le_bytes());
    h.update(end.to_le_bytes());
    hex::encode(&h.finalize()[..16])
}

/// One interval of GPU use by one pod (or replica), as the controller / agent report it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageRecord {
    /// Stable identity of the consumer, e.g. the pod uid; with the interval it
    /// forms the record id.
    pub source: String,
    pub tenant: String,
    /// Job or inference service, `namespace/name`.
    pub job: String,
    pub region: String,
    pub node: String,
    /// Accelerator model, e.g. `H100`.
    pub model: String,
    /// GPU share held: 1000 = one whole GPU, 500 = half of one, 8000 = eight.
    pub gpu_milli: i64,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    /// IT energy attributed to this pod over the interval (agent), joules.
    pub it_energy_j: i64,
    /// Power usage effectiveness of the site (facility / IT energy), e.g. 1.15.
    pub pue: f64,
    /// Share of the energy covered by green power contracts, 0..=1.
    pub green_share: f64,
    /// Grid emission factor, kg CO2 per kWh (China 2022: 0.5703).
    pub grid_kg_per_kwh: f64,
}

/// Who held GPUs, where, under which site figures: all a usage record
/// says besides its interval and energy. The GPU meter observes pods as
/// holders ([`super::PodRun`]), the simulated cluster its replicas; both
/// make their records with [`Holder::record`].
#[derive(Debug, Clone, PartialEq)]
pub struct Holder {
    /// Stable identity, e.g. the pod uid.
    pub source: String,
    pub tenant: String,
    /// Job or inference service, `namespace/name`.
    pub job: String,
    pub region: String,
    pub node: String,
    pub model: String,
    /// GPU share held: 1000 per whole device, or the share of one.
    pub gpu_milli: i64,
    pub pue: f64,
    pub green_share: f64,
    pub grid_kg_per_kwh: f64,
}

impl Holder {
    /// The record of this holder's use over `[start_s, end_s)` (unix s).
    pub fn record(&self, start_s: i64, end_s: i64, it_energy_j: i64) -> UsageRecord {
        let at = |s: i64| DateTime::from_timestamp(s, 0).unwrap_or_default();
        UsageRecord {
            source: self.source.clone(),
            tenant: self.tenant.clone(),
            job: self.job.clone(),
            region: self.region.clone(),
            node: self.node.clone(),
            model: self.model.clone(),
            gpu_milli: self.gpu_milli,
            start: at(start_s),
            end: at(end_s),
            it_energy_j,
            pue: self.pue,
            green_share: self.green_share,
            grid_kg_per_kwh: self.grid_kg_per_kwh,
        }
    }
}

/// A usage record after validation, with its id and derived integer quantities.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeteredUsage {
    pub id: String,
    pub source: String,
    pub tenant: String,
    pub job: String,
    pub region: String,
    pub node: String,
    pub model: String,
    pub gpu_milli: i64,
    pub start_s: i64,
    pub end_s: i64,
    /// gpu_milli × seconds.
    pub milli_gpu_s: i64,
    pub it_energy_j: i64,
    pub pue_milli: i64,
    /// IT energy × PUE, rounded half up to the joule.
    pub facility_j: i64,
    pub green_milli: i64,
    pub grid_mg_per_kwh: i64,
    /// facility kWh × (1 − green share) × grid factor, in mg, rounded half up.
    pub carbon_mg: i64,
}

/// Characters refused in free text that people read: control characters,
/// and the invisible format characters that change how text displays —
/// bidirectional overrides and isolates (U+202A–U+202E, U+2066–U+2069,
/// U+200E/F, U+061C) and zero-width ones (U+200B–U+200D, U+2060–U+2064,
/// U+FEFF) — with which "acme" and "acme\u{200b}" look alike, or an
/// issuer reads backwards.
pub fn hidden_or_control(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{061C}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}')
}

/// Why `value` is not acceptable free text (see [`hidden_or_control`]).
pub fn text_problem(value: &str) -> Option<String> {
    value
        .char_indices()
        .find(|(_, c)| hidden_or_control(*c))
        .map(|(at, c)| {
            format!(
                "must not contain control, bidirectional or zero-width characters (U+{:04X} at byte {at}); remove it",
                c as u32
            )
        })
}

pub(super) fn text_field(field: &str, value: &str) -> Result<()> {
    if value.is_empty() {
        return Err(LedgerError::invalid(field, "must not be empty"));
    }
    if value.len() > 253 {
        return Err(LedgerError::invalid(field, "must be at most 253 bytes"));
    }
    if let Some(why) = text_problem(value) {
        return Err(LedgerError::invalid(field, why));
    }
    Ok(())
}

/// [`text_field`] for each (field, value), in order.
fn text_fields(fields: &[(&str, &str)]) -> Result<()> {
    fields.iter().try_for_each(|(f, v)| text_field(f, v))
}

fn interval(start: DateTime<Utc>, end: DateTime<Utc>) -> Result<(i64, i64)> {
    let (s, e) = (start.timestamp(), end.timestamp());
    if e <= s {
        return Err(LedgerError::invalid(
            "end",
            format!("interval end {end} must be after its start {start}"),
        ));
    }
    Ok((s, e))
}

fn milli(field: &str, v: f64, lo: f64, hi: f64) -> Result<i64> {
    if !(lo..=hi).contains(&v) {
        return Err(LedgerError::invalid(
            field,
            format!("{v} is outside {lo}..={hi}"),
        ));
    }
    Ok((v * 1000.0).round() as i64)
}

impl UsageRecord {
    /// Validates the record and derives its id and integer quantities.
    pub fn meter(&self) -> Result<MeteredUsage> {
        text_fields(&[
            ("source", &self.source),
            ("tenant", &self.tenant),
            ("job", &self.job),
            ("region", &self.region),
            ("node", &self.node),
            ("model", &self.model),
        ])?;
        if !(1..=1_000_000).contains(&self.gpu_milli) {
            return Err(LedgerError::invalid(
                "gpu_milli",
                format!(
                    "{} must be in 1..=1000000 (1000 = one whole GPU)",
                    self.gpu_milli
                ),
            ));
        }
        let (start_s, end_s) = interval(self.start, self.end)?;
        if self.it_energy_j < 0 {
            return Err(LedgerError::invalid(
                "it_energy_j",
                format!("{} must not be negative", self.it_energy_j),
            ));
        }
        let pue_milli = milli("pue", self.pue, 1.0, 5.0)?;
        let green_milli = milli("green_share", self.green_share, 0.0, 1.0)?;
        if !(0.0..=5.0).contains(&self.grid_kg_per_kwh) {
            return Err(LedgerError::invalid(
                "grid_kg_per_kwh",
                format!("{} is outside 0..=5 kg CO2/kWh", self.grid_kg_per_kwh),
            ));
        }
        let grid_mg_per_kwh = (self.grid_kg_per_kwh * 1e6).round() as i64;
        let facility_j = mul_div_half_up(self.it_energy_j, pue_milli, 1000);
        // facility_j / J_PER_KWH × (1000 − green)/1000 × mg/kWh, in one rounding.
        let carbon_mg = {
            let n = facility_j as i128 * (1000 - green_milli) as i128 * grid_mg_per_kwh as i128;
            let d = 1000i128 * J_PER_KWH as i128;
            ((2 * n + d) / (2 * d)) as i64
        };
        Ok(MeteredUsage {
            id: record_id("usage", &self.source, start_s, end_s),
            source: self.source.clone(),
            tenant: self.tenant.clone(),
            job: self.job.clone(),
            region: self.region.clone(),
            node: self.node.clone(),
            model: self.model.clone(),
            gpu_milli: self.gpu_milli,
            start_s,
            end_s,
            milli_gpu_s: self.gpu_milli * (end_s - start_s),
            it_energy_j: self.it_energy_j,
            pue_milli,
            facility_j,
            green_milli,
            grid_mg_per_kwh,
            carbon_mg,
        })
    }
}

/// The pieces of [start, end) cut at UTC month boundaries, in order (one
/// piece when the interval lies inside one month).
fn month_pieces(start_s: i64, end_s: i64) -> impl Iterator<Item = (i64, i64)> {
    let mut from = start_s;
    std::iter::from_fn(move || {
        if from >= end_s {
            return None;
        }
        let to = Month::of_s(from).range_s().1.min(end_s);
        let piece = (from, to);
        from = to;
        Some(piece)
    })
}

/// Pro rata share of `total` for the piece [from, to) of an interval that
/// starts at `start` and lasts `len` seconds, by the cumulative floor rule:
/// `floor(total × (to − start) / len) − floor(total × (from − start) / len)`.
/// Exact in integers: the pieces' shares add up to `total`, and each is
/// within 1 of its proportional value (the remainder lands on the piece
/// where the running sum crosses a whole unit).
fn pro_rata(total: i64, start: i64, len: i64, from: i64, to: i64) -> i64 {
    mul_div_floor(total, to - start, len) - mul_div_floor(total, from - start, len)
}

/// The id of one month's piece of a split record: derived from the whole
/// record's id and the piece's start, so replays split to the same ids.
fn piece_id(whole_id: &str, piece_start: i64) -> String {
    let mut h = Sha256::new();
    h.update(whole_id.as_bytes());
    h.update([0]);
    h.update(piece_start.to_le_bytes());
    hex::encode(&h.finalize()[..16])
}

/// A metered record that can be cut into per-month pieces.
pub trait MonthPieces: Sized {
    fn id(&self) -> &str;
    /// [start, end) in unix seconds.
    fn span(&self) -> (i64, i64);
    /// The piece [from, to) with id `id`; `share` turns a whole-record
    /// quantity into the piece's [`pro_rata`] share.
    fn piece(&self, id: String, from: i64, to: i64, share: impl Fn(i64) -> i64) -> Self;
}

/// Whether [start, end) crosses a UTC month boundary, i.e. whether
/// [`split_by_month_into`] cuts it into pieces.
pub fn crosses_month(start_s: i64, end_s: i64) -> bool {
    Month::of_s(start_s) != Month::of_s(end_s - 1)
}

/// Appends `record` to `out`, split at UTC month boundaries when its
/// interval crosses one, so each month's statement holds exactly its share.
/// Quantities are split by [`pro_rata`]'s cumulative floor rule, so the
/// pieces add up to the whole exactly. A piece's id derives from the whole
/// record's id; a record inside one month is appended unchanged.
pub fn split_by_month_into<R: MonthPieces>(record: R, out: &mut Vec<R>) {
    let (start, end) = record.span();
    if !crosses_month(start, end) {
        out.push(record);
        return;
    }
    for (from, to) in month_pieces(start, end) {
        let share = |v: i64| pro_rata(v, start, end - start, from, to);
        out.push(record.piece(piece_id(record.id(), from), from, to, share));
    }
}

impl MonthPieces for MeteredUsage {
    fn id(&self) -> &str {
        &self.id
    }
    fn span(&self) -> (i64, i64) {
        (self.start_s, self.end_s)
    }
    /// GPU time by seconds (exact); IT energy, facility energy and carbon pro rata.
    fn piece(&self, id: String, from: i64, to: i64, share: impl Fn(i64) -> i64) -> Self {
        MeteredUsage {
            id,
            start_s: from,
            end_s: to,
            milli_gpu_s: self.gpu_milli * (to - from),
            it_energy_j: share(self.it_energy_j),
            facility_j: share(self.facility_j),
            carbon_mg: share(self.carbon_mg),
            ..self.clone()
        }
    }
}

/// Tokens served by one inference service over one interval (from counter deltas).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRecord {
    /// Stable identity of the counter source, e.g. the scraped pod uid.
    pub source: String,
    pub tenant: String,
    /// Inference service, `namespace/name`.
    pub service: String,
    /// Served model name.
    pub model: String,
    /// The region the service runs in (for voucher eligibility).
    pub region: String,
    pub tier: Tier,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
}

/// A validated token record with its id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeteredTokens {
    pub id: String,
    pub source: String,
    pub tenant: String,
    pub service: String,
    pub model: String,
    pub region: String,
    pub tier: Tier,
    pub start_s: i64,
    pub end_s: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
}

impl TokenRecord {
    pub fn meter(&self) -> Result<MeteredTokens> {
        text_fields(&[
            ("source", &self.source),
            ("tenant", &self.tenant),
            ("service", &self.service),
            ("model", &self.model),
            ("region", &self.region),
        ])?;
        let (start_s, end_s) = interval(self.start, self.end)?;
        for (field, v) in [
            ("prompt_tokens", self.prompt_tokens),
            ("completion_tokens", self.completion_tokens),
        ] {
            if v < 0 {
                return Err(LedgerError::invalid(
                    field,
                    format!(
                        "{v} must not be negative (counter resets are handled before ingestion)"
                    ),
                ));
            }
        }
        Ok(MeteredTokens {
            id: record_id("tokens", &self.source, start_s, end_s),
            source: self.source.clone(),
            tenant: self.tenant.clone(),
            service: self.service.clone(),
            model: self.model.clone(),
            region: self.region.clone(),
            tier: self.tier,
            start_s,
            end_s,
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.completion_tokens,
        })
    }
}

impl MonthPieces for MeteredTokens {
    fn id(&self) -> &str {
        &self.id
    }
    fn span(&self) -> (i64, i64) {
        (self.start_s, self.end_s)
    }
    /// Prompt and completion tokens pro rata.
    fn piece(&self, id: String, from: i64, to: i64, share: impl Fn(i64) -> i64) -> Self {
        MeteredTokens {
            id,
            start_s: from,
            end_s: to,
            prompt_tokens: share(self.prompt_tokens),
            completion_tokens: share(self.completion_tokens),
            ..self.clone()
        }
    }
}

/// What the admin sends to issue a compute voucher (算力券).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VoucherSpec {
    /// Optional caller-chosen id (makes issuing idempotent); generated when absent.
    #[serde(default)]
    pub id: Option<String>,
    pub tenant: String,
    pub issuer: String,
    pub face_value_fen: Fen,
    /// Largest share of each charge the voucher may cover, in basis points
    /// (10000 = 100%). Use [`super::money::ratio_to_bp`] to convert a ratio.
    pub copay_ratio_bp: i64,
    pub valid_from: DateTime<Utc>,
    pub valid_until: DateTime<Utc>,
    /// Eligible regions; empty = all.
    #[serde(default)]
    pub regions: Vec<String>,
    /// Eligible charge kinds; empty = all.
    #[serde(default)]
    pub kinds: Vec<ChargeKind>,
    /// A model voucher (模型券): only token charges of these tiers; empty =
    /// no tier limit. Naming tiers or models limits the voucher to token
    /// charges.
    #[serde(default)]
    pub tiers: Vec<Tier>,
    /// A model voucher: only token charges of these models; empty = any.
    #[serde(default)]
    pub models: Vec<String>,
}

impl VoucherSpec {
    pub fn validate(&self) -> Result<()> {
        if let Some(id) = &self.id {
            text_field("id", id)?;
        }
        text_field("tenant", &self.tenant)?;
        text_field("issuer", &self.issuer)?;
        if self.face_value_fen <= 0 {
            return Err(LedgerError::invalid(
                "face_value_fen",
                format!("{} must be a positive amount in fen", self.face_value_fen),
            ));
        }
        if !(1..=BP_ONE).contains(&self.copay_ratio_bp) {
            return Err(LedgerError::invalid(
                "copay_ratio",
                format!(
                    "{} basis points is outside 1..=10000: a voucher covers between 0.01% and 100% of a charge",
                    self.copay_ratio_bp
                ),
            ));
        }
        if self.valid_until <= self.valid_from {
            return Err(LedgerError::invalid(
                "valid_until",
                format!(
                    "{} must be after valid_from {}",
                    self.valid_until, self.valid_from
                ),
            ));
        }
        for (i, r) in self.regions.iter().enumerate() {
            text_field(&format!("regions[{i}]"), r)?;
        }
        for (i, m) in self.models.iter().enumerate() {
            text_field(&format!("models[{i}]"), m)?;
        }
        let token_only = !self.tiers.is_empty() || !self.models.is_empty();
        if token_only && self.kinds.iter().any(|k| *k != ChargeKind::Tokens) {
            return Err(LedgerError::invalid(
                "kinds",
                "a voucher limited to tiers or models pays token charges only; leave `kinds` out or set it to [\"tokens\"]",
            ));
        }
        Ok(())
    }
}

/// A voucher with its current balance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Voucher {
    pub id: String,
    pub tenant: String,
    pub issuer: String,
    pub face_value_fen: Fen,
    pub balance_fen: Fen,
    pub copay_ratio_bp: i64,
    pub valid_from: DateTime<Utc>,
    pub valid_until: DateTime<Utc>,
    pub regions: Vec<String>,
    pub kinds: Vec<ChargeKind>,
    /// Token tiers it pays (model voucher); empty = any.
    #[serde(default)]
    pub tiers: Vec<Tier>,
    /// Models it pays (model voucher); empty = any.
    #[serde(default)]
    pub models: Vec<String>,
    pub issued_at: DateTime<Utc>,
    /// Gross of every charge the voucher has shared so far: its co-pay is
    /// taken of this running total ([`super::vouchers`]). Internal.
    #[serde(skip)]
    pub shared_gross_fen: Fen,
}

impl Voucher {
    /// Is this the voucher `spec` issues (same terms; kinds and tiers in any
    /// order, times to the second)? A voucher is issued once: a spec that
    /// differs is an edit, refused.
    pub fn issued_as(&self, spec: &VoucherSpec) -> bool {
        let sorted = |v: &[ChargeKind]| {
            let mut v = v.to_vec();
            v.sort();
            v.dedup();
            v
        };
        let tiers = |v: &[Tier]| {
            let mut v = v.to_vec();
            v.sort();
            v.dedup();
            v
        };
        spec.id.as_deref().is_none_or(|id| id == self.id)
            && self.tenant == spec.tenant
            && self.issuer == spec.issuer
            && self.face_value_fen == spec.face_value_fen
            && self.copay_ratio_bp == spec.copay_ratio_bp
            && self.valid_from.timestamp() == spec.valid_from.timestamp()
            && self.valid_until.timestamp() == spec.valid_until.timestamp()
            && self.regions == spec.regions
            && sorted(&self.kinds) == sorted(&spec.kinds)
            && tiers(&self.tiers) == tiers(&spec.tiers)
            && self.models == spec.models
    }

    /// May this voucher pay a `kind` charge in `region` for the interval [start, end)?
    /// The whole interval must lie inside the validity window.
    /// `token` is the (tier, model) of a token charge: a model voucher
    /// (tiers or models named) pays only token charges that match.
    pub fn eligible(
        &self,
        kind: ChargeKind,
        region: &str,
        (start_s, end_s): (i64, i64),
        token: Option<(Tier, &str)>,
    ) -> bool {
        let scoped = !self.tiers.is_empty() || !self.models.is_empty();
        let token_ok = match token {
            Some((tier, model)) => {
                (self.tiers.is_empty() || self.tiers.contains(&tier))
                    && (self.models.is_empty() || self.models.iter().any(|m| m == model))
            }
            None => !scoped,
        };
        self.valid_from.timestamp() <= start_s
            && end_s <= self.valid_until.timestamp()
            && (self.regions.is_empty() || self.regions.iter().any(|r| r == region))
            && (self.kinds.is_empty() || self.kinds.contains(&kind))
            && token_ok
    }
}

/// Where a voucher stands at a moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VoucherStatus {
    /// Before `valid_from`: its balance cannot be drawn yet.
    NotYetValid,
    /// Inside the window with a positive balance.
    Active,
    /// Inside the window, fully drawn.
    Exhausted,
    /// At or after `valid_until`: whatever balance is left has lapsed and is
    /// never spendable again.
    Expired,
}

impl Voucher {
    pub fn status_at(&self, at: DateTime<Utc>) -> VoucherStatus {
        if at >= self.valid_until {
            VoucherStatus::Expired
        } else if at < self.valid_from {
            VoucherStatus::NotYetValid
        } else if self.balance_fen == 0 {
            VoucherStatus::Exhausted
        } else {
            VoucherStatus::Active
        }
    }

    /// What charges at `at` could still draw: the balance while active, else 0.
    pub fn spendable_at(&self, at: DateTime<Utc>) -> Fen {
        match self.status_at(at) {
            VoucherStatus::Active => self.balance_fen,
            _ => 0,
        }
    }

    /// The balance that lapsed unused, once expired (0 before).
    pub fn lapsed_at(&self, at: DateTime<Utc>) -> Fen {
        match self.status_at(at) {
            VoucherStatus::Expired => self.balance_fen,
            _ => 0,
        }
    }
}

/// A tenant: an SME, a department, a province… organised as a tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tenant {
    pub name: String,
    pub parent: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// Validates a tenant name: DNS-label-like, so it is safe in labels and URLs.
pub fn validate_tenant_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(LedgerError::invalid(
            "name",
            format!("'{name}' must be 1-63 characters of a-z, 0-9 and '-', not starting or ending with '-'"),
        ))
    }
}

/// An audit log entry: every voucher issue, redemption, adjustment and admin action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// Monotonic sequence number (use as a cursor for `since`).
    pub seq: i64,
    pub at: DateTime<Utc>,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub detail: serde_json::Value,
}

/// A calendar month (UTC): statements and monthly quotas use it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Month {
    pub year: i32,
    pub month: u32,
}

impl Month {
    /// Parses `YYYY-MM`.
    pub fn parse(s: &str) -> Result<Month> {
        let bad = || LedgerError::invalid("month", format!("'{s}' must be YYYY-MM, e.g. 2026-11"));
        let (y, m) = s.split_once('-').ok_or_else(bad)?;
        if y.len() != 4 || m.len() != 2 {
            return Err(bad());
        }
        let year: i32 = y.parse().map_err(|_| bad())?;
        let month: u32 = m.parse().map_err(|_| bad())?;
        if !(1..=12).contains(&month) {
            return Err(bad());
        }
        Ok(Month { year, month })
    }

    pub fn of(t: DateTime<Utc>) -> Month {
        Month {
            year: t.year(),
            month: t.month(),
        }
    }

    /// The month containing unix second `s`.
    pub fn of_s(s: i64) -> Month {
        Month::of(DateTime::from_timestamp(s, 0).unwrap_or_default())
    }

    pub fn start(self) -> DateTime<Utc> {
        Utc.from_utc_datetime(
            &NaiveDate::from_ymd_opt(self.year, self.month, 1)
                .expect("valid month")
                .and_hms_opt(0, 0, 0)
                .expect("midnight"),
        )
    }

    pub fn next(self) -> Month {
        if self.month == 12 {
            Month {
                year: self.year + 1,
                month: 1,
            }
        } else {
            Month {
                year: self.year,
                month: self.month + 1,
            }
        }
    }

    /// [start, end) in unix seconds.
    pub fn range_s(self) -> (i64, i64) {
        (self.start().timestamp(), self.next().start().timestamp())
    }
}

impl fmt::Display for Month {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    #[test]
    fn hidden_and_control_characters_are_refused_naming_the_code_point() {
        for bad in [
            "city\u{202E}uaerub",
            "ac\u{200B}me",
            "\u{FEFF}x",
            "a\u{2066}b",
            "tab\there",
        ] {
            let why = super::text_problem(bad).unwrap_or_else(|| panic!("{bad:?} accepted"));
            assert!(why.contains("U+"), "{why}");
        }
        assert_eq!(super::text_problem("杭州市经济和信息化局"), None);
        assert_eq!(super::text_problem("Hangzhou Bureau (2026)"), None);
    }

    use super::*;

    pub(crate) fn usage(source: &str, start: i64, secs: i64) -> UsageRecord {
        UsageRecord {
            source: source.into(),
            tenant: "acme".into(),
            job: "ns/train".into(),
            region: "gansu".into(),
            node: "n1".into(),
            model: "H100".into(),
            gpu_milli: 1000,
            start: Utc.timestamp_opt(start, 0).unwrap(),
            end: Utc.timestamp_opt(start + secs, 0).unwrap(),
            it_energy_j: 3_600_000,
            pue: 1.2,
            green_share: 0.5,
            grid_kg_per_kwh: 0.5703,
        }
    }

    #[test]
    fn metering_derives_facility_energy_and_carbon_by_hand() {
        let m = usage("pod-1", 1_700_000_000, 3600).meter().unwrap();
        assert_eq!(m.milli_gpu_s, 3_600_000);
        assert_eq!(m.facility_j, 4_320_000); // 1 kWh × 1.2
                                             // 1.2 kWh × 0.5 brown × 570.3 g = 342.18 g
        assert_eq!(m.carbon_mg, 342_180);
    }

    #[test]
    fn id_depends_on_source_and_interval_only() {
        let a = usage("pod-1", 100, 60).meter().unwrap();
        let mut r = usage("pod-1", 100, 60);
        r.it_energy_j = 5;
        assert_eq!(a.id, r.meter().unwrap().id);
        assert_ne!(a.id, usage("pod-1", 100, 61).meter().unwrap().id);
        assert_ne!(a.id, usage("pod-2", 100, 60).meter().unwrap().id);
    }

    #[test]
    fn bad_usage_names_the_field() {
        let mut r = usage("p", 100, 60);
        r.end = r.start;
        assert_eq!(r.meter().unwrap_err().field(), Some("end"));
        let mut r = usage("p", 100, 60);
        r.gpu_milli = 0;
        assert_eq!(r.meter().unwrap_err().field(), Some("gpu_milli"));
        let mut r = usage("p", 100, 60);
        r.green_share = 1.5;
        assert_eq!(r.meter().unwrap_err().field(), Some("green_share"));
        let mut r = usage("p", 100, 60);
        r.it_energy_j = -1;
        assert_eq!(r.meter().unwrap_err().field(), Some("it_energy_j"));
    }

    #[test]
    fn a_record_crossing_month_ends_is_split_pro_rata_exactly() {
        // 2026-10-31T23:00Z for 26 h: 1 h in October, then 25 h in November.
        let start = Utc
            .with_ymd_and_hms(2026, 10, 31, 23, 0, 0)
            .unwrap()
            .timestamp();
        let mut r = usage("pod-1", start, 26 * 3600);
        r.it_energy_j = 1_000_003; // not divisible by 26
        let whole = r.meter().unwrap();
        let mut pieces = vec![];
        split_by_month_into(whole.clone(), &mut pieces);
        assert_eq!(pieces.len(), 2);
        let (oct, nov) = (&pieces[0], &pieces[1]);
        assert_eq!((oct.start_s, oct.end_s), (start, start + 3600));
        assert_eq!((nov.start_s, nov.end_s), (start + 3600, start + 26 * 3600));
        assert_eq!(oct.milli_gpu_s, 3_600_000);
        assert_eq!(nov.milli_gpu_s, 25 * 3_600_000);
        // floor(1_000_003 / 26) = 38_461; November takes the rest.
        assert_eq!(oct.it_energy_j, 38_461);
        assert_eq!(nov.it_energy_j, 1_000_003 - 38_461);
        for f in [
            |m: &MeteredUsage| m.facility_j,
            |m: &MeteredUsage| m.carbon_mg,
            |m: &MeteredUsage| m.milli_gpu_s,
        ] {
            assert_eq!(f(oct) + f(nov), f(&whole));
        }
        assert_ne!(oct.id, nov.id);
        assert_ne!(oct.id, whole.id);
        let mut again = vec![];
        split_by_month_into(whole.clone(), &mut again);
        assert_eq!(again, pieces, "deterministic ids and shares");
        // Ends exactly at a month boundary: not split.
        let r = usage("pod-2", start, 3600).meter().unwrap();
        let mut one = vec![];
        split_by_month_into(r.clone(), &mut one);
        assert_eq!(one, vec![r]);
    }

    #[test]
    fn a_token_record_spanning_three_months_splits_into_three() {
        let start = Utc.with_ymd_and_hms(2026, 10, 31, 0, 0, 0).unwrap();
        let end = Utc.with_ymd_and_hms(2026, 12, 1, 12, 0, 0).unwrap();
        let t = TokenRecord {
            source: "pod".into(),
            tenant: "acme".into(),
            service: "ns/chat".into(),
            model: "qwen".into(),
            region: "gansu".into(),
            tier: Tier::Basic,
            start,
            end,
            prompt_tokens: 1_000_000_007,
            completion_tokens: 5,
        };
        let m = t.meter().unwrap();
        let mut pieces = vec![];
        split_by_month_into(m.clone(), &mut pieces);
        let months: Vec<String> = pieces
            .iter()
            .map(|p| Month::of_s(p.start_s).to_string())
            .collect();
        assert_eq!(months, ["2026-10", "2026-11", "2026-12"]);
        assert_eq!(
            pieces.iter().map(|p| p.prompt_tokens).sum::<i64>(),
            m.prompt_tokens
        );
        assert_eq!(pieces.iter().map(|p| p.completion_tokens).sum::<i64>(), 5);
        // 2 + 60 + 1 = 63 half-days. October: floor(5 × 2 / 63) = 0;
        // November: floor(5 × 62 / 63) − 0 = 4; December: the remaining 1.
        let completion: Vec<i64> = pieces.iter().map(|p| p.completion_tokens).collect();
        assert_eq!(completion, [0, 4, 1]);
    }

    #[test]
    fn months_parse_and_bound() {
        let m = Month::parse("2026-12").unwrap();
        assert_eq!(m.to_string(), "2026-12");
        assert_eq!(m.next().to_string(), "2027-01");
        let (s, e) = m.range_s();
        assert_eq!(e - s, 31 * 86_400);
        for bad in ["2026-13", "2026-1", "26-11", "2026/11", ""] {
            assert_eq!(
                Month::parse(bad).unwrap_err().field(),
                Some("month"),
                "{bad}"
            );
        }
    }

    #[test]
    fn tenant_names_are_label_safe() {
        assert!(validate_tenant_name("gov-hz-01").is_ok());
        for bad in ["", "Acme", "a b", "-x", "x-", "a/b"] {
            assert!(validate_tenant_name(bad).is_err(), "{bad}");
        }
    }
}
