//! The ledger store: one suite, run against SQLite and a real PostgreSQL.
//! Plus: kill -9 of the real binary during ingestion, then restart.

#[path = "support/pg.rs"]
mod pg;

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use zhisuan::ledger::{
    default_rate_card, ChargeKind, Ledger, LedgerError, Month, Quota, RateCard, Tier, TokenRecord,
    UsageRecord, VoucherSpec,
};

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn usage(source: &str, tenant: &str, start: &str, secs: i64) -> UsageRecord {
    let start = t(start);
    UsageRecord {
        source: source.into(),
        tenant: tenant.into(),
        job: "ns/train".into(),
        region: "gansu".into(),
        node: "n1".into(),
        model: "H100".into(),
        gpu_milli: 1000,
        start,
        end: start + chrono::Duration::seconds(secs),
        it_energy_j: 700 * secs, // 700 W
        pue: 1.2,
        green_share: 0.5,
        grid_kg_per_kwh: 0.5703,
    }
}

fn tokens(source: &str, tenant: &str, start: &str, prompt: i64, completion: i64) -> TokenRecord {
    let start = t(start);
    TokenRecord {
        source: source.into(),
        tenant: tenant.into(),
        service: "ns/chat".into(),
        model: "qwen-72b".into(),
        region: "beijing".into(),
        tier: Tier::Industry,
        start,
        end: start + chrono::Duration::seconds(60),
        prompt_tokens: prompt,
        completion_tokens: completion,
    }
}

fn voucher(id: &str, tenant: &str, face: i64, bp: i64, from: &str, until: &str) -> VoucherSpec {
    VoucherSpec {
        id: Some(id.into()),
        tenant: tenant.into(),
        issuer: "hangzhou-econ".into(),
        face_value_fen: face,
        copay_ratio_bp: bp,
        valid_from: t(from),
        valid_until: t(until),
        regions: vec![],
        kinds: vec![],
    }
}

/// A ledger with the default rate card and tenants acme (under gov) and beta.
fn seeded(open: &dyn Fn() -> Ledger) -> Ledger {
    let l = open();
    assert!(l.ensure_rate_card("test").unwrap());
    l.create_tenant("admin", "gov", None).unwrap();
    l.create_tenant("admin", "acme", Some("gov")).unwrap();
    l.create_tenant("admin", "beta", None).unwrap();
    l
}

fn count(l: &Ledger, tenant: &str, month: &str) -> i64 {
    let s = l.statement(tenant, Month::parse(month).unwrap()).unwrap();
    s.usage_records + s.token_records
}

fn case_tenants_and_keys(open: &dyn Fn() -> Ledger) {
    let l = seeded(open);
    assert_eq!(l.ancestors("acme").unwrap(), vec!["gov".to_string()]);
    assert!(matches!(
        l.create_tenant("admin", "acme", None),
        Err(LedgerError::Conflict { .. })
    ));
    assert_eq!(
        l.create_tenant("admin", "x", Some("nope"))
            .unwrap_err()
            .field(),
        Some("parent")
    );
    assert_eq!(
        l.create_tenant("admin", "Bad Name", None)
            .unwrap_err()
            .field(),
        Some("name")
    );
    let key = l.create_api_key("admin", "acme").unwrap();
    assert!(key.starts_with("zs_") && key.len() > 40);
    assert_eq!(l.tenant_for_api_key(&key).unwrap().as_deref(), Some("acme"));
    assert_eq!(l.tenant_for_api_key("zs_wrong").unwrap(), None);
    assert!(matches!(
        l.create_api_key("admin", "ghost"),
        Err(LedgerError::UnknownTenant(_))
    ));
    // the audit log never holds the key itself
    let audit = l.audit_since(0, 1000).unwrap();
    assert!(audit.iter().all(|e| !e.detail.to_string().contains(&key)));
    assert_eq!(l.revoke_api_keys("admin", "acme").unwrap(), 1);
    assert_eq!(l.tenant_for_api_key(&key).unwrap(), None);
    let names: Vec<String> = l.tenants().unwrap().into_iter().map(|t| t.name).collect();
    assert_eq!(names, ["acme", "beta", "gov"]);
}

fn case_quotas(open: &dyn Fn() -> Ledger) {
    let l = seeded(open);
    assert_eq!(l.quota("acme").unwrap(), None);
    let mut q = Quota {
        gpu_hours_per_month: Some(100),
        tokens_per_month: Some(1_000_000),
        ..Default::default()
    };
    q.gpus.insert("H100".into(), 8);
    l.set_quota("admin", "acme", &q).unwrap();
    assert_eq!(l.quota("acme").unwrap(), Some(q.clone()));
    let mut bad = q.clone();
    bad.gpus.insert("A100".into(), -1);
    assert_eq!(
        l.set_quota("admin", "acme", &bad).unwrap_err().field(),
        Some("gpus.A100")
    );
    assert_eq!(
        l.quota("acme").unwrap(),
        Some(q),
        "a rejected quota changes nothing"
    );
    l.ingest(
        &[usage("p1", "acme", "2026-11-03T00:00:00Z", 7200)],
        &[tokens("s1", "acme", "2026-11-03T00:00:00Z", 300, 200)],
    )
    .unwrap();
    let used = l
        .month_use("acme", Month::parse("2026-11").unwrap())
        .unwrap();
    assert_eq!(used.milli_gpu_seconds, 7_200_000);
    assert_eq!(used.gpu_hours, 2.0);
    assert_eq!(used.tokens, 500);
    assert_eq!(
        l.month_use("acme", Month::parse("2026-10").unwrap())
            .unwrap()
            .tokens,
        0
    );
}

fn case_rate_cards(open: &dyn Fn() -> Ledger) {
    let l = seeded(open);
    let mut next: RateCard = default_rate_card();
    next.version = 2;
    next.effective_from = NaiveDate::from_ymd_opt(2026, 12, 1).unwrap();
    let mut gap = next.clone();
    gap.gpu.retain(|p| p.model != "H100");
    gap.gpu.retain(|p| p.model != "*");
    let audit_before = l.audit_since(0, 1000).unwrap().len();
    assert_eq!(
        l.add_rate_card("admin", &gap).unwrap_err().field(),
        Some("gpu")
    );
    assert_eq!(l.rate_cards().unwrap().len(), 1, "nothing half-written");
    assert_eq!(l.audit_since(0, 1000).unwrap().len(), audit_before);
    for p in &mut next.gpu {
        p.fen_per_gpu_hour *= 2;
    }
    l.add_rate_card("admin", &next).unwrap();
    // November priced by v1 (H100: 25 CNY/h), December by v2 (50 CNY/h).
    l.ingest(
        &[
            usage("p1", "acme", "2026-11-30T23:00:00Z", 3600),
            usage("p1", "acme", "2026-12-01T00:00:00Z", 3600),
        ],
        &[],
    )
    .unwrap();
    let nov = l
        .statement("acme", Month::parse("2026-11").unwrap())
        .unwrap();
    let dec = l
        .statement("acme", Month::parse("2026-12").unwrap())
        .unwrap();
    assert_eq!(nov.totals.gross_fen, 2500);
    assert_eq!(dec.totals.gross_fen, 5000);
}

fn case_voucher_validation(open: &dyn Fn() -> Ledger) {
    let l = seeded(open);
    let bad_copay = voucher(
        "v1",
        "acme",
        1000,
        10_001,
        "2026-01-01T00:00:00Z",
        "2027-01-01T00:00:00Z",
    );
    assert_eq!(
        l.issue_voucher("admin", &bad_copay).unwrap_err().field(),
        Some("copay_ratio")
    );
    let backwards = voucher(
        "v1",
        "acme",
        1000,
        5000,
        "2027-01-01T00:00:00Z",
        "2026-01-01T00:00:00Z",
    );
    assert_eq!(
        l.issue_voucher("admin", &backwards).unwrap_err().field(),
        Some("valid_until")
    );
    let zero = voucher(
        "v1",
        "acme",
        0,
        5000,
        "2026-01-01T00:00:00Z",
        "2027-01-01T00:00:00Z",
    );
    assert_eq!(
        l.issue_voucher("admin", &zero).unwrap_err().field(),
        Some("face_value_fen")
    );
    let ghost = voucher(
        "v1",
        "ghost",
        10,
        5000,
        "2026-01-01T00:00:00Z",
        "2027-01-01T00:00:00Z",
    );
    assert_eq!(
        l.issue_voucher("admin", &ghost).unwrap_err().field(),
        Some("tenant")
    );
    assert!(l.vouchers(None).unwrap().is_empty(), "nothing half-written");
    let ok = voucher(
        "v1",
        "acme",
        1000,
        5000,
        "2026-01-01T00:00:00Z",
        "2027-01-01T00:00:00Z",
    );
    let v = l.issue_voucher("admin", &ok).unwrap();
    assert_eq!(v.balance_fen, 1000);
    // re-issuing the same id + spec is idempotent; a different spec conflicts
    assert_eq!(l.issue_voucher("admin", &ok).unwrap().id, "v1");
    let mut other = ok.clone();
    other.face_value_fen = 2000;
    assert!(matches!(
        l.issue_voucher("admin", &other),
        Err(LedgerError::Conflict { .. })
    ));
    assert_eq!(l.vouchers(Some("acme")).unwrap().len(), 1);
    assert_eq!(l.account_balance("voucher:v1").unwrap(), -1000);
    assert_eq!(l.trial_balance().unwrap(), 0);
}

fn case_ingest_idempotent_with_vouchers(open: &dyn Fn() -> Ledger) {
    let l = seeded(open);
    let registry = prometheus::Registry::new();
    l.register_metrics(&registry).unwrap();
    // 60% co-pay, 5000 fen; a second voucher limited to beijing + tokens.
    l.issue_voucher(
        "admin",
        &voucher(
            "early",
            "acme",
            5000,
            6000,
            "2026-11-01T00:00:00Z",
            "2026-11-20T00:00:00Z",
        ),
    )
    .unwrap();
    let mut tok = voucher(
        "tok",
        "acme",
        100_000,
        10_000,
        "2026-01-01T00:00:00Z",
        "2027-01-01T00:00:00Z",
    );
    tok.regions = vec!["beijing".into()];
    tok.kinds = vec![ChargeKind::Tokens];
    l.issue_voucher("admin", &tok).unwrap();
    let us: Vec<UsageRecord> = (0..10)
        .map(|i| usage(&format!("pod-{i}"), "acme", "2026-11-05T00:00:00Z", 3600))
        .chain([usage("pod-late", "acme", "2026-11-25T00:00:00Z", 3600)]) // after "early" expired
        .chain([usage("pod-b", "beta", "2026-11-05T00:00:00Z", 3600)])
        .collect();
    let ts = vec![tokens(
        "svc-1",
        "acme",
        "2026-11-05T00:00:00Z",
        2_000_000,
        1_000_000,
    )];
    let first = l.ingest(&us, &ts).unwrap();
    assert_eq!((first.usage_new, first.tokens_new), (12, 1));
    // Each H100 hour: 2500 fen gross, 60% = 1500 covered while "early" lasts:
    // hours 1-3 take 4500, hour 4 takes the remaining 500, hours 5-10 none.
    // Tokens (industry): 2M × 400 + 1M × 1200 per M = 2000 fen, fully covered by "tok".
    let st = l
        .statement("acme", Month::parse("2026-11").unwrap())
        .unwrap();
    assert_eq!(st.totals.gross_fen, 11 * 2500 + 2000);
    assert_eq!(st.totals.voucher_fen, 5000 + 2000);
    assert_eq!(
        st.totals.net_fen,
        st.totals.gross_fen - st.totals.voucher_fen
    );
    for g in &st.gpu {
        assert_eq!(g.gross_fen, g.voucher_fen + g.net_fen);
    }
    let balances: Vec<(String, i64, i64)> = st
        .vouchers
        .iter()
        .map(|v| (v.id.clone(), v.balance_fen, v.redeemed_in_month_fen))
        .collect();
    assert_eq!(
        balances,
        [("early".into(), 0, 5000), ("tok".into(), 98_000, 2000)]
    );
    assert_eq!(st.totals.gpu_hours, 11.0);
    assert_eq!(st.tokens[0].tier, "industry");
    // energy: 11 h × 0.7 kW × 1.2 PUE = 9.24 kWh; carbon 9.24 × 0.5 × 0.5703 kg
    assert!((st.totals.facility_kwh - 9.24).abs() < 1e-9);
    assert!((st.totals.carbon_kg - 9.24 * 0.5 * 0.5703).abs() < 1e-6);

    // Replaying everything (a controller failover) changes nothing.
    let again = l.ingest(&us, &ts).unwrap();
    assert_eq!(
        (
            again.usage_new,
            again.usage_duplicate,
            again.tokens_duplicate
        ),
        (0, 12, 1)
    );
    assert_eq!(
        l.statement("acme", Month::parse("2026-11").unwrap())
            .unwrap(),
        st
    );
    // Duplicates inside one batch count once.
    let dup = l
        .ingest(
            &[
                usage("pod-x", "acme", "2026-11-06T00:00:00Z", 60),
                usage("pod-x", "acme", "2026-11-06T00:00:00Z", 60),
            ],
            &[],
        )
        .unwrap();
    assert_eq!((dup.usage_new, dup.usage_duplicate), (1, 1));

    // Double entry: every entry balances; accounts agree with the statement.
    assert_eq!(l.trial_balance().unwrap(), 0);
    let st = l
        .statement("acme", Month::parse("2026-11").unwrap())
        .unwrap();
    assert_eq!(l.account_balance("tenant:acme").unwrap(), st.totals.net_fen);
    for v in l.vouchers(None).unwrap() {
        assert_eq!(
            -l.account_balance(&format!("voucher:{}", v.id)).unwrap(),
            v.balance_fen
        );
        assert!(v.balance_fen >= 0);
    }
    // API summary agrees with the statement.
    let sum = l.usage_summary("acme", None, None).unwrap();
    assert_eq!(
        (sum.gross_fen, sum.voucher_fen, sum.net_fen),
        (
            st.totals.gross_fen,
            st.totals.voucher_fen,
            st.totals.net_fen
        )
    );
    assert_eq!(sum.tokens.get("industry"), Some(&3_000_000));
    // Redemptions are audited.
    let audit = l.audit_since(0, 1000).unwrap();
    assert!(audit
        .iter()
        .any(|e| e.action == "voucher.redeem" && e.target == "early"));
    assert!(audit
        .iter()
        .any(|e| e.action == "voucher.issue" && e.target == "tok"));
    // Metrics count new records only.
    let text = prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .unwrap();
    assert!(
        text.contains(&format!(
            "zhisuan_tenant_charge_fen_total{{tenant=\"acme\"}} {}",
            st.totals.gross_fen
        )),
        "{text}"
    );
    assert!(
        text.contains("zhisuan_voucher_balance_fen{tenant=\"acme\",voucher=\"early\"} 0"),
        "{text}"
    );
    assert!(text.contains("zhisuan_tenant_tokens_total{kind=\"prompt\",tenant=\"acme\",tier=\"industry\"} 2000000"), "{text}");
}

fn case_bad_input_writes_nothing(open: &dyn Fn() -> Ledger) {
    let l = seeded(open);
    let good = usage("ok", "acme", "2026-11-05T00:00:00Z", 60);
    let e = l
        .ingest(
            std::slice::from_ref(&good),
            &[tokens("s", "acme", "2026-11-05T00:00:00Z", -5, 1)],
        )
        .unwrap_err();
    assert_eq!(e.field(), Some("tokens[0].prompt_tokens"));
    let e = l
        .ingest(
            &[
                good.clone(),
                usage("x", "ghost", "2026-11-05T00:00:00Z", 60),
            ],
            &[],
        )
        .unwrap_err();
    assert!(
        matches!(e, LedgerError::UnknownTenant(ref n) if n == "ghost"),
        "{e}"
    );
    let mut backwards = usage("y", "acme", "2026-11-05T00:00:00Z", 60);
    backwards.end = backwards.start;
    assert_eq!(
        l.ingest(&[good.clone(), backwards], &[])
            .unwrap_err()
            .field(),
        Some("usage[1].end")
    );
    // before the first rate card: a gap in time
    let early = usage("z", "acme", "2019-06-01T00:00:00Z", 60);
    assert_eq!(
        l.ingest(&[good, early], &[]).unwrap_err().field(),
        Some("usage[1].start")
    );
    assert_eq!(count(&l, "acme", "2026-11"), 0, "nothing half-written");
    assert_eq!(l.trial_balance().unwrap(), 0);
    assert!(matches!(
        l.statement("ghost", Month::parse("2026-11").unwrap()),
        Err(LedgerError::UnknownTenant(_))
    ));
}

fn case_energy_attribution_adds_up(open: &dyn Fn() -> Ledger) {
    // A device's metered energy over a window is split among its pods (the
    // agent's attribution) plus an idle remainder; the ledger must hold
    // exactly the pods' shares so Σ tenant IT energy + idle = metered.
    let l = seeded(open);
    let metered_j: i64 = 9_876_543;
    let shares = [
        ("acme", 3_000_001i64),
        ("beta", 2_500_000),
        ("acme", 1_234_567),
    ];
    let idle = metered_j - shares.iter().map(|s| s.1).sum::<i64>();
    let recs: Vec<UsageRecord> = shares
        .iter()
        .enumerate()
        .map(|(i, &(tenant, j))| {
            let mut u = usage(&format!("pod-{i}"), tenant, "2026-11-07T00:00:00Z", 600);
            u.it_energy_j = j;
            u
        })
        .collect();
    l.ingest(&recs, &[]).unwrap();
    let m = Month::parse("2026-11").unwrap();
    let it: i64 = ["acme", "beta"]
        .iter()
        .map(|t| {
            l.statement(t, m)
                .unwrap()
                .energy
                .iter()
                .map(|e| e.it_energy_j)
                .sum::<i64>()
        })
        .sum();
    assert_eq!(it + idle, metered_j);
}

fn case_audit_cursor(open: &dyn Fn() -> Ledger) {
    let l = seeded(open);
    let all = l.audit_since(0, 1000).unwrap();
    assert!(all
        .iter()
        .any(|e| e.action == "tenant.create" && e.target == "acme" && e.actor == "admin"));
    let last = all.last().unwrap().seq;
    l.audit(
        "admin",
        "job.cancel",
        "acme/ns/train",
        serde_json::json!({"why": "test"}),
    )
    .unwrap();
    let new = l.audit_since(last, 10).unwrap();
    assert_eq!(new.len(), 1);
    assert_eq!(new[0].action, "job.cancel");
    assert!(new[0].seq > last);
    let credit = || {
        l.adjust(
            "admin",
            "adj-1",
            "acme",
            -300,
            "SLA credit",
            t("2026-11-10T00:00:00Z"),
        )
    };
    assert!(credit().unwrap(), "first adjustment is posted");
    assert!(!credit().unwrap(), "the same adjustment id posts once");
    let st = l
        .statement("acme", Month::parse("2026-11").unwrap())
        .unwrap();
    assert_eq!(st.totals.adjustments_fen, -300);
    assert_eq!(st.totals.payable_fen, st.totals.net_fen - 300);
    assert_eq!(
        l.account_balance("tenant:acme").unwrap(),
        st.totals.payable_fen
    );
    assert_eq!(l.trial_balance().unwrap(), 0);
}

fn case_statement_csv(open: &dyn Fn() -> Ledger) {
    let l = seeded(open);
    l.ingest(&[usage("p", "acme", "2026-11-05T00:00:00Z", 1800)], &[])
        .unwrap();
    let csv = l
        .statement("acme", Month::parse("2026-11").unwrap())
        .unwrap()
        .to_csv();
    assert!(csv.starts_with("tenant,month,section,"), "{csv}");
    assert!(
        csv.contains("acme,2026-11,gpu,H100,gansu,0.500000,gpu_hours,12.50,0.00,12.50"),
        "{csv}"
    );
    assert!(
        csv.contains("acme,2026-11,total,payable,,,,,,12.50"),
        "{csv}"
    );
}

type Case = (&'static str, fn(&dyn Fn() -> Ledger));

const CASES: &[Case] = &[
    ("tenants_and_keys", case_tenants_and_keys),
    ("quotas", case_quotas),
    ("rate_cards", case_rate_cards),
    ("voucher_validation", case_voucher_validation),
    (
        "ingest_idempotent_with_vouchers",
        case_ingest_idempotent_with_vouchers,
    ),
    ("bad_input_writes_nothing", case_bad_input_writes_nothing),
    (
        "energy_attribution_adds_up",
        case_energy_attribution_adds_up,
    ),
    ("audit_cursor", case_audit_cursor),
    ("statement_csv", case_statement_csv),
];

fn run_suite(backend: &str, open: &dyn Fn() -> Ledger) {
    for (name, case) in CASES {
        eprintln!("[{backend}] {name}");
        case(open);
    }
}

#[test]
fn suite_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let n = std::sync::atomic::AtomicU32::new(0);
    let open = || {
        let i = n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ledger::open(dir.path().join(format!("l{i}.db")).to_str().unwrap()).unwrap()
    };
    run_suite("sqlite", &open);
}

#[test]
fn suite_postgres() {
    let Some(server) = pg::PgServer::start() else {
        return;
    };
    let open = || Ledger::open(&server.fresh_db()).unwrap();
    run_suite("postgres", &open);
}

#[test]
fn postgres_is_safe_to_call_from_a_tokio_runtime() {
    let Some(server) = pg::PgServer::start() else {
        return;
    };
    let url = server.fresh_db();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let l = Ledger::open(&url).unwrap();
        l.create_tenant("admin", "acme", None).unwrap();
        assert_eq!(l.tenants().unwrap().len(), 1);
    });
}

#[test]
fn sqlite_reopen_keeps_data_and_migrations_are_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l.db");
    let path = path.to_str().unwrap();
    {
        let l = Ledger::open(path).unwrap();
        l.ensure_rate_card("t").unwrap();
        l.create_tenant("a", "acme", None).unwrap();
        l.ingest(&[usage("p", "acme", "2026-11-05T00:00:00Z", 60)], &[])
            .unwrap();
    }
    let l = Ledger::open(path).unwrap();
    assert!(!l.ensure_rate_card("t").unwrap());
    assert_eq!(count(&l, "acme", "2026-11"), 1);
    let _ = Utc.timestamp_opt(0, 0);
}
