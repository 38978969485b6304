// zhisuan tenant console: the tenant's own quota, jobs, use over time,
// statements, vouchers and token calls, through the same API and key as curl.
// The key lives in this tab's sessionStorage only. No framework, no CDN.
"use strict";

const KEY = "zhisuan.console.key";
const REFRESH_MS = 5000;
const SERIES_MS = 30000;
const PAGE = 100;

const $ = (id) => document.getElementById(id);
let jobLimit = PAGE;
let timers = [];

// ---------- formatting ----------
const int = (n) => Math.round(Number(n) || 0).toLocaleString("en-US");
const yuan = (fen) => ((Number(fen) || 0) / 100).toFixed(2);
const gpus = (g) => (Number.isInteger(g) ? String(g) : Number(g).toFixed(2));
const gpuHours = (milliGpuS) => (milliGpuS / 3.6e6).toFixed(2);
const when = (iso) => (iso ? iso.replace("T", " ").replace(/\.\d+/, "").replace("Z", " UTC") : "");

function text(tag, value, cls) {
  const node = document.createElement(tag);
  node.textContent = value;
  if (cls) node.className = cls;
  return node;
}

// A cell whose text may be long: cut with an ellipsis, whole in the tooltip.
function clipped(value) {
  const td = text("td", value, "clip");
  td.title = value;
  return td;
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const c of cells) tr.appendChild(c instanceof Node ? c : text("td", String(c)));
  return tr;
}

function fill(tableId, rows, empty) {
  const body = $(tableId).querySelector("tbody");
  body.replaceChildren(...rows);
  if (!rows.length && empty) {
    const td = text("td", empty, "empty");
    td.colSpan = $(tableId).querySelectorAll("thead th").length || 2;
    body.appendChild(row([td]));
  }
}

function show(id, message) {
  const node = $(id);
  node.textContent = message || "";
  node.hidden = !message;
}

// ---------- the API ----------
class SignedOut extends Error {}
class ApiFailure extends Error {
  constructor(status, detail) {
    const field = detail.field ? ` (${detail.field})` : "";
    super(`${status} ${detail.code || "error"}${field}: ${detail.message || "the server answered with an error"}`);
    this.status = status;
    this.field = detail.field;
  }
}

async function api(path, opts = {}) {
  const key = sessionStorage.getItem(KEY);
  if (!key) throw new SignedOut();
  const headers = { Authorization: "Bearer " + key };
  if (opts.body !== undefined) headers["Content-Type"] = "application/json";
  const r = await fetch(path, {
    method: opts.method || "GET",
    headers,
    body: opts.body === undefined ? undefined : JSON.stringify(opts.body),
    cache: "no-store",
  });
  if (r.status === 401) {
    signOut("密钥被拒绝（错误、已吊销或已过期），请重新登录。The key was refused (wrong, revoked or expired): sign in again.");
    throw new SignedOut();
  }
  if (!r.ok) {
    let detail = {};
    try {
      detail = (await r.json()).error || {};
    } catch (_) {
      // not JSON: keep the status alone
    }
    throw new ApiFailure(r.status, detail);
  }
  return opts.raw ? r : r.json();
}

// Runs a refresh; a failure shows as a message, never as a blank page.
async function guarded(work) {
  try {
    await work();
  } catch (e) {
    if (!(e instanceof SignedOut)) show("message", "出错 Error: " + e.message);
  }
}

// ---------- sign in / out ----------
async function signIn(key) {
  sessionStorage.setItem(KEY, key);
  try {
    const q = await api("/v1/quota");
    show("message", "");
    $("signin").hidden = true;
    $("app").hidden = false;
    $("who").hidden = false;
    $("tenant").textContent = "租户 Tenant: " + q.tenant;
    if (!$("month").value) $("month").value = q.month;
    startRefresh();
    renderQuota(q);
  } catch (e) {
    if (e instanceof ApiFailure && e.status === 403) {
      signOut("这是管理员密钥；控制台只接受租户密钥。This is not a tenant key: the console signs in tenants (admins use the API).");
    } else if (!(e instanceof SignedOut)) {
      signOut("出错 Error: " + e.message);
    }
  }
}

function signOut(message) {
  sessionStorage.removeItem(KEY);
  for (const t of timers) clearInterval(t);
  timers = [];
  $("app").hidden = true;
  $("who").hidden = true;
  $("signin").hidden = false;
  $("key").value = "";
  show("message", message || "");
}

function startRefresh() {
  for (const t of timers) clearInterval(t);
  const fast = () => guarded(async () => {
    await Promise.all([refreshQuota(), refreshJobs(), refreshVouchers(), refreshCalls()]);
  });
  const slow = () => guarded(refreshSeries);
  fast();
  slow();
  timers = [setInterval(fast, REFRESH_MS), setInterval(slow, SERIES_MS)];
}

// ---------- quota ----------
async function refreshQuota() {
  renderQuota(await api("/v1/quota"));
}

function limitOf(map, key) {
  return map && map[key] !== undefined ? int(map[key]) : "不限 unlimited";
}

function renderQuota(q) {
  const l = q.limits, u = q.used;
  $("clock").textContent = q.month;
  const rows = [
    ["GPU 占用 GPUs held (pending + running)", `${gpus(u.gpus)} / ${limitOf(l.gpus, "*")}`],
  ];
  for (const [model, n] of Object.entries(l.gpus || {})) {
    if (model === "*") continue;
    rows.push([`GPU 上限 GPUs of ${model}`, `${gpus((u.gpus_by_model || {})[model] || 0)} / ${int(n)}`]);
  }
  rows.push([`本月 GPU 时长 GPU-hours in ${q.month}`, `${u.gpu_hours_this_month.toFixed(2)} h / ${limitOf(l.gpu_hours_per_month, "*")}`]);
  for (const [model, n] of Object.entries(l.gpu_hours_per_month || {})) {
    if (model !== "*") rows.push([`GPU 时长上限 GPU-hours of ${model}`, `${int(n)} h`]);
  }
  rows.push([`本月词元 Tokens in ${q.month}`, `${int(u.tokens_this_month)} / ${limitOf(l.tokens_per_month, "*")}`]);
  for (const [tier, n] of Object.entries(l.tokens_per_month || {})) {
    if (tier !== "*") rows.push([`词元上限 Tokens of tier ${tier}`, int(n)]);
  }
  rows.push(["保障 GPU Guaranteed GPUs", int(l.guaranteed_gpus)]);
  rows.push(["可借用空闲 May borrow idle GPUs", l.borrowable ? "是 yes" : "否 no"]);
  fill("quota", rows.map(([k, v]) => row([text("th", k), text("td", v, "num")])));
}

// ---------- jobs ----------
function placementOf(job) {
  if (!job.placement.length) return "";
  const where = new Map();
  for (const p of job.placement) {
    const k = `${p.region}/${p.node}${p.gpu_model ? " " + p.gpu_model : ""}`;
    where.set(k, (where.get(k) || 0) + 1);
  }
  return [...where].map(([k, n]) => (n > 1 ? `${k} ×${n}` : k)).join(", ");
}

const PHASES = {
  pending: "等待 pending",
  running: "运行 running",
  succeeded: "完成 succeeded",
  failed: "失败 failed",
  cancelled: "已取消 cancelled",
};

async function refreshJobs() {
  const page = await api(`/v1/jobs?limit=${jobLimit}`);
  renderJobs(page);
}

function renderJobs(page) {
  const rows = page.jobs.map((j) => {
    const cancel = document.createElement("td");
    if (j.phase === "pending" || j.phase === "running") {
      const b = text("button", "取消 Cancel");
      b.type = "button";
      b.dataset.job = j.id;
      b.className = "cancel";
      cancel.appendChild(b);
    }
    const tr = row([
      clipped(j.name),
      text("td", j.kind),
      text("td", PHASES[j.phase] || j.phase, "phase " + j.phase),
      text("td", gpus((j.replicas * j.gpu_milli_per_replica) / 1000), "num"),
      clipped(placementOf(j)),
      clipped(j.explanation.summary),
      cancel,
    ]);
    tr.dataset.job = j.name;
    tr.dataset.phase = j.phase;
    return tr;
  });
  fill("jobs", rows, "还没有作业 No jobs yet: submit one above.");
  $("more-jobs").hidden = !page.next || jobLimit >= 1000;
  document.body.dataset.jobs = String(page.jobs.length);
}

async function submitJob(form) {
  const f = new FormData(form);
  const models = String(f.get("gpu_models") || "").split(",").map((s) => s.trim()).filter(Boolean);
  const body = {
    kind: f.get("kind"),
    name: String(f.get("name")).trim(),
    replicas: Number(f.get("replicas")),
    gpus_per_replica: Number(f.get("gpus_per_replica")),
    image: String(f.get("image")).trim(),
  };
  if (models.length) body.gpu_models = models;
  show("submit-error", "");
  for (const input of form.querySelectorAll(".invalid")) input.classList.remove("invalid");
  try {
    await api("/v1/jobs", { method: "POST", body });
    form.elements.name.value = "";
    await refreshJobs();
    await refreshQuota();
  } catch (e) {
    if (e instanceof SignedOut) return;
    show("submit-error", "提交失败 Not submitted — " + e.message);
    const input = e.field && form.elements[e.field.split(".")[0]];
    if (input) input.classList.add("invalid");
  }
}

async function cancelJob(id) {
  await guarded(async () => {
    await api(`/v1/jobs/${encodeURIComponent(id)}`, { method: "DELETE" });
    await refreshJobs();
  });
}

// ---------- vouchers and calls ----------
async function refreshVouchers() {
  const list = await api("/v1/vouchers");
  fill(
    "vouchers",
    list.vouchers.map((v) =>
      row([clipped(v.id), clipped(v.issuer), text("td", yuan(v.spendable_fen), "num"), text("td", v.status), text("td", when(v.valid_until))]),
    ),
    "没有代金券 No vouchers",
  );
}

async function refreshCalls() {
  const page = await api("/v1/calls?limit=20");
  const calls = page.calls.slice().reverse();
  fill(
    "calls",
    calls.map((c) =>
      row([
        text("td", when(c.at)),
        clipped(c.model),
        text("td", int(c.prompt_tokens + c.completion_tokens) + (c.estimated ? " *" : ""), "num"),
        text("td", String(c.status), "num"),
        text("td", int(c.latency_ms) + " ms", "num"),
      ]),
    ),
    "没有模型调用 No token calls",
  );
}

// ---------- use over time ----------
async function refreshSeries() {
  const s = await api(`/v1/usage/series?bucket=${$("bucket").value}`);
  const label = (p) => {
    const d = new Date(p.start_s * 1000).toISOString();
    return s.bucket === "hour" ? d.slice(11, 13) + ":00" : d.slice(5, 10);
  };
  const bars = zhisuanCharts.stacked;
  bars("chart-gpu", s.points, label, [(p) => p.milli_gpu_s / 3.6e6], ["#2f6fb3"], (v) => v.toFixed(1) + " h");
  bars(
    "chart-spend",
    s.points,
    label,
    [(p) => p.voucher_fen / 100, (p) => (p.gross_fen - p.voucher_fen) / 100],
    ["#3fa34d", "#e0a020"],
    (v) => "¥" + v.toFixed(2),
  );
  bars("chart-carbon", s.points, label, [(p) => p.carbon_mg / 1e6], ["#8a8f98"], (v) => v.toFixed(2) + " kg");
  bars("chart-tokens", s.points, label, [(p) => p.tokens], ["#7a5cc0"], (v) => int(v));
  document.body.dataset.series = String(s.points.length);
}

// ---------- statements ----------
async function download(format) {
  const month = $("month").value;
  if (!month) return show("message", "请选择月份 Choose a month first.");
  await guarded(async () => {
    const r = await api(`/v1/statements/${month}?format=${format}`, { raw: true });
    const blob = await r.blob();
    const a = document.createElement("a");
    a.href = URL.createObjectURL(blob);
    a.download = `statement-${month}.${format}`;
    document.body.appendChild(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 10000);
    if (format === "json") renderStatement(JSON.parse(await blob.text()));
  });
}

function renderStatement(s) {
  const t = s.totals || {};
  const rows = [
    ["月份 Month", s.month],
    ["总额 Gross (CNY)", yuan(t.gross_fen)],
    ["代金券抵扣 Vouchers (CNY)", yuan(t.voucher_fen)],
    ["净额 Net (CNY)", yuan(t.net_fen)],
    ["调整 Adjustments (CNY)", yuan(t.adjustments_fen)],
    ["应付 Payable (CNY)", yuan(t.payable_fen)],
    ["出具时间 As of", when(s.as_of)],
  ];
  fill("statement", rows.map(([k, v]) => row([text("th", k), text("td", v, "num")])));
}

// ---------- wiring ----------
$("signin-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const key = $("key").value.trim();
  if (key) signIn(key);
});
$("signout").addEventListener("click", () => signOut("已退出 Signed out."));
$("submit-form").addEventListener("submit", (e) => {
  e.preventDefault();
  submitJob(e.target);
});
$("jobs").addEventListener("click", (e) => {
  const b = e.target.closest("button.cancel");
  if (b) cancelJob(b.dataset.job);
});
$("more-jobs").addEventListener("click", () => {
  jobLimit = Math.min(jobLimit + PAGE, 1000);
  guarded(refreshJobs);
});
$("bucket").addEventListener("change", () => guarded(refreshSeries));
$("statement-form").addEventListener("submit", (e) => {
  e.preventDefault();
  download("json");
});
$("download-csv").addEventListener("click", () => download("csv"));

if (sessionStorage.getItem(KEY)) signIn(sessionStorage.getItem(KEY));
