// zhisuan live page: reads /v1/overview (regions now from the scheduler;
// this month's totals from the ledger, the same as the statements) and the
// ledger's series, and draws SVG charts. No framework, no CDN: everything
// comes from this origin.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";
const REFRESH_MS = 5000;
// The admin or scrape key, for tenants' rows (kept in this tab only;
// without it the overview leaves them out, as /metrics does).
const KEY = "zhisuan.page.key";
const COLORS = ["#2f6fb3", "#3fa34d", "#e0a020", "#c9483b", "#7a5cc0", "#2aa6a6", "#8a8f98"];

function el(tag, attrs, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

function fmt(v) {
  if (Math.abs(v) >= 1e6) return (v / 1e6).toFixed(1) + "M";
  if (Math.abs(v) >= 1e4) return (v / 1e3).toFixed(1) + "k";
  if (Math.abs(v) >= 100) return v.toFixed(0);
  if (Math.abs(v) >= 1) return v.toFixed(1);
  return v.toFixed(2);
}

// Horizontal (optionally stacked) bar chart.
// rows: [{label, values: [..one per series..]}]; series: [{name, color}].
// opts.max: fixed scale (e.g. 1 for shares); opts.percent: show values as %.
function barChart(svgId, rows, series, opts) {
  opts = opts || {};
  const svg = document.getElementById(svgId);
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  const width = svg.clientWidth || 600;
  const labelW = Math.min(170, Math.max(80, width * 0.3));
  const barH = 18, gap = 6, legendH = series.length > 1 ? 22 : 4;
  const height = Math.max(40, legendH + rows.length * (barH + gap) + 6);
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("height", height);
  if (rows.length === 0) {
    svg.appendChild(el("text", { x: 8, y: 24, class: "empty" }, opts.empty || "no data yet"));
    return;
  }
  const totals = rows.map((r) => r.values.reduce((a, b) => a + Math.max(0, b), 0));
  const max = opts.max || Math.max(...totals, 1e-9);
  const shownText = (row, r) => opts.shown ? opts.shown(row) : opts.percent ? (totals[r] * 100).toFixed(0) + "%" : fmt(totals[r]) + (opts.suffix || "");
  // Room after the longest bar for the longest value text, never cut.
  const textW = 12 + 7 * Math.max(...rows.map((row, r) => shownText(row, r).length));
  const plotW = Math.max(40, width - labelW - textW);
  if (series.length > 1) {
    let lx = labelW;
    series.forEach((s, i) => {
      svg.appendChild(el("rect", { x: lx, y: 5, width: 12, height: 12, fill: s.color || COLORS[i] }));
      svg.appendChild(el("text", { x: lx + 16, y: 15 }, s.name));
      lx += 24 + s.name.length * 7;
    });
  }
  rows.forEach((row, r) => {
    const y = legendH + r * (barH + gap);
    // A label longer than its column is cut with an ellipsis; the whole
    // label is in its tooltip.
    const fits = Math.max(4, Math.floor((labelW - 10) / 7));
    const cut = row.label.length > fits ? row.label.slice(0, fits - 1) + "…" : row.label;
    const label = el("text", { x: labelW - 6, y: y + 13, "text-anchor": "end", class: "label" }, cut);
    label.appendChild(el("title", {}, row.label));
    svg.appendChild(label);
    svg.appendChild(el("line", { x1: labelW, x2: labelW + plotW, y1: y + barH + 2, y2: y + barH + 2, class: "gridline" }));
    let x = labelW;
    row.values.forEach((v, i) => {
      const w = Math.max(0, (Math.max(0, v) / max) * plotW);
      const rect = el("rect", {
        x, y, width: w.toFixed(2), height: barH, rx: 2,
        fill: series[i].color || COLORS[i], class: "bar", "data-value": v,
      });
      rect.appendChild(el("title", {}, `${row.label} — ${series[i].name}: ${fmt(v)}`));
      svg.appendChild(rect);
      x += w;
    });
    svg.appendChild(el("text", { x: x + 6, y: y + 13, class: "value" }, shownText(row, r)));
  });
}

// A count as an integer; a fractional GPU count with two decimals.
function count(v) {
  return Number.isInteger(v) ? String(v) : v.toFixed(2);
}

function render(o) {
  // Tenants' rows come only with a key: say so instead of "no data".
  const tenantOpts = (x) => Object.assign({}, x, o.tenants_hidden ? { empty: "sign in above (admin or scrape key) to see tenants" } : {});
  const byName = (a, b) => a.label.localeCompare(b.label);
  // GPU use by region: allocated stacked with the rest of the installed GPUs.
  barChart("chart-region-gpus",
    o.regions.filter((r) => r.gpus > 0).map((r) => ({ label: r.name, values: [r.gpus_allocated, Math.max(0, r.gpus - r.gpus_allocated)], gpus: r.gpus, used: r.gpus_allocated })),
    [{ name: "allocated 已分配", color: COLORS[0] }, { name: "free 空闲", color: "#d5dbe3" }],
    { shown: (row) => `${count(row.used)} / ${row.gpus} GPUs` });
  barChart("chart-region-green", o.regions.filter((r) => r.gpus > 0).map((r) => ({ label: r.name, values: [r.green_share] })),
    [{ name: "green share", color: COLORS[1] }], { max: 1, percent: true });
  barChart("chart-region-carbon", o.regions.map((r) => ({ label: r.name, values: [r.carbon_mg / 1e6] })).sort(byName),
    [{ name: "kg CO₂", color: "#8a8f98" }], { suffix: " kg", empty: "no usage metered this month" });

  // Spend this month: voucher-covered and net payable stack to the gross charge.
  barChart("chart-tenant-spend",
    o.tenants.map((t) => ({ label: t.tenant, values: [t.voucher_fen / 100, t.net_fen / 100] })),
    [{ name: "voucher-covered 券抵扣", color: COLORS[1] }, { name: "net payable 应付", color: COLORS[2] }],
    tenantOpts({ shown: (row) => "¥" + (row.values[0] + row.values[1]).toFixed(2) }));

  barChart("chart-vouchers",
    o.vouchers.map((v) => ({ label: `${v.tenant} / ${v.id}`, values: [v.spendable_fen / 100] })),
    [{ name: "balance", color: COLORS[4] }], tenantOpts({ shown: (row) => "¥" + row.values[0].toFixed(2) }));

  const tiers = [...new Set(o.tenants.flatMap((t) => Object.keys(t.tokens)))].sort();
  barChart("chart-tokens",
    o.tenants.filter((t) => Object.keys(t.tokens).length).map((t) => ({ label: t.tenant, values: tiers.map((tier) => t.tokens[tier] || 0) })),
    tiers.map((tier, i) => ({ name: tier, color: COLORS[i] })), tenantOpts({ suffix: " tokens" }));

  const p = o.pending;
  barChart("chart-pending", p ? Object.entries(p.by_reason).map(([reason, n]) => ({ label: reason, values: [n] })) : [],
    [{ name: "jobs", color: COLORS[3] }],
    { shown: (row) => `${row.values[0]} jobs`, empty: p ? "无等待 none waiting" : "无记录 no sample in the last 5 minutes (no controller leading)" });
  document.getElementById("pending-at").textContent = p ? `sampled ${new Date(p.at_s * 1000).toISOString().slice(0, 16).replace("T", " ")} UTC` : "";
  document.getElementById("month").textContent = o.month;
  document.body.dataset.month = o.month;
  document.body.dataset.tenants = String(o.tenants.length);
}

async function refresh() {
  const status = document.getElementById("status");
  try {
    const key = sessionStorage.getItem(KEY);
    const headers = key ? { Authorization: "Bearer " + key } : {};
    const resp = await fetch("/v1/overview", { cache: "no-store", headers });
    if (resp.status === 401 && key) {
      sessionStorage.removeItem(KEY);
      showKeyForm();
      throw new Error("the key was refused (wrong or revoked); tenants' rows need the admin or scrape key");
    }
    if (!resp.ok) throw new Error(`/v1/overview answered ${resp.status}`);
    const overview = await resp.json();
    render(overview);
    await refreshSeries(key);
    status.className = "status";
    status.textContent = `as of ${overview.as_of.replace("T", " ").replace(/\.\d+/, "")} · updated ${new Date().toLocaleTimeString()} · refreshes every ${REFRESH_MS / 1000} s`;
    document.body.dataset.rendered = "true";
  } catch (e) {
    status.className = "status error";
    status.textContent = `cannot read the overview: ${e.message}`;
  }
}

// Use and spend over time, split by region and tenant: the admin's view
// (`/v1/series`, from the ledger), drawn only with the admin key.
const SERIES_MS = 30000;
let seriesAt = 0;

async function refreshSeries(key) {
  const hint = document.getElementById("over-time-hint");
  if (!key) {
    hint.hidden = false;
    return;
  }
  if (Date.now() - seriesAt < SERIES_MS) return;
  const get = async (group) => {
    const r = await fetch(`/v1/series?group=${group}`, { cache: "no-store", headers: { Authorization: "Bearer " + key } });
    if (r.status === 401 || r.status === 403) throw new Error("use and spend over time need the admin key");
    if (!r.ok) throw new Error(`/v1/series answered ${r.status}`);
    return r.json();
  };
  try {
    const [regions, tenants] = await Promise.all([get("region"), get("tenant")]);
    const waiting = await fetch("/v1/series/pending?bucket=hour", { cache: "no-store", headers: { Authorization: "Bearer " + key } });
    if (!waiting.ok) throw new Error(`/v1/series/pending answered ${waiting.status}`);
    drawPendingOverTime(await waiting.json());
    await refreshPending(key);
    seriesAt = Date.now();
    hint.hidden = true;
    drawGroups("chart-series-region", "legend-region", regions, (p) => p.milli_gpu_s / 3.6e6, (v) => v.toFixed(1) + " h");
    drawGroups("chart-series-tenant", "legend-tenant", tenants, (p) => p.gross_fen / 100, (v) => "¥" + v.toFixed(2));
    drawGroups("chart-series-carbon", null, regions, (p) => p.carbon_mg / 1e6, (v) => v.toFixed(2) + " kg");
    document.body.dataset.series = String(regions.groups.length + tenants.groups.length);
  } catch (e) {
    hint.hidden = false;
    hint.textContent = e.message;
  }
}

// The admin's "why pending" table: every tenant's waiting jobs, longest first.
async function refreshPending(key) {
  const r = await fetch("/v1/pending?limit=50", { cache: "no-store", headers: { Authorization: "Bearer " + key } });
  if (!r.ok) return;
  const list = await r.json();
  const cell = (text, cls) => {
    const td = document.createElement("td");
    td.textContent = text;
    td.title = text;
    if (cls) td.className = cls;
    return td;
  };
  const rows = list.jobs.map((p) => {
    const tr = document.createElement("tr");
    const gpus = (p.job.replicas * p.job.gpu_milli_per_replica) / 1000;
    tr.append(cell(p.tenant, "clip"), cell(p.job.name, "clip"), cell(p.job.submitted_at.replace("T", " ").replace(/\.\d+/, "")),
      cell(Number.isInteger(gpus) ? String(gpus) : gpus.toFixed(2), "num"), cell(p.job.explanation.summary, "clip"));
    tr.dataset.tenant = p.tenant;
    return tr;
  });
  if (!rows.length) {
    const tr = document.createElement("tr");
    const td = cell("No job is waiting.", "empty");
    td.colSpan = 5;
    tr.append(td);
    rows.push(tr);
  }
  document.querySelector("#pending tbody").replaceChildren(...rows);
  document.body.dataset.pending = String(list.jobs.length);
}

// Workloads waiting, each hour's peak (the leading controller samples them
// once a minute into the ledger); the legend gives each reason's peak.
function drawPendingOverTime(s) {
  const hours = s.total.map((_, i) => i);
  const label = (i) => new Date(s.total[i].start_s * 1000).toISOString().slice(11, 16);
  const sampled = s.total.some((p) => p.samples > 0);
  zhisuanCharts.stacked("chart-series-pending", hours, label, [(i) => s.total[i].jobs], COLORS,
    (v) => Math.round(v) + " jobs", ["waiting"], sampled ? "无等待 none waiting" : "无记录 no samples (no controller leading)");
  const legend = document.getElementById("legend-pending");
  legend.replaceChildren(...s.reasons.map((r, k) => {
    const span = document.createElement("span");
    const peak = Math.max(0, ...r.points.map((p) => p.jobs));
    span.textContent = `${r.reason} ≤ ${peak}`;
    span.title = `${r.reason}: at most ${peak} jobs waiting in an hour of the last 48`;
    span.style.borderLeft = `0.8em solid ${COLORS[(k + 1) % COLORS.length]}`;
    return span;
  }));
  document.body.dataset.pendingPeak = String(Math.max(0, ...s.total.map((p) => p.jobs)));
}

// One stacked bar per day; a part per group, its name in the tooltip and legend.
function drawGroups(chartId, legendId, series, value, unit) {
  const groups = series.groups;
  const buckets = groups.length ? groups[0].points.map((_, i) => i) : [];
  const label = (i) => new Date(groups[0].points[i].start_s * 1000).toISOString().slice(5, 10);
  zhisuanCharts.stacked(chartId, buckets, label,
    groups.map((g) => (i) => value(g.points[i])), COLORS, unit, groups.map((g) => g.name));
  if (legendId) {
    const legend = document.getElementById(legendId);
    legend.replaceChildren(...groups.map((g, k) => {
      const span = document.createElement("span");
      span.textContent = g.name;
      span.style.borderLeft = `0.8em solid ${COLORS[k % COLORS.length]}`;
      span.title = g.name;
      return span;
    }));
  }
}

function showKeyForm() {
  const signedIn = Boolean(sessionStorage.getItem(KEY));
  document.getElementById("key-form").hidden = signedIn;
  document.getElementById("key-out").hidden = !signedIn;
}

document.getElementById("key-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const input = document.getElementById("page-key");
  if (input.value.trim()) sessionStorage.setItem(KEY, input.value.trim());
  seriesAt = 0;
  input.value = "";
  showKeyForm();
  refresh();
});
document.getElementById("key-out").addEventListener("click", () => {
  sessionStorage.removeItem(KEY);
  seriesAt = 0;
  showKeyForm();
  refresh();
});

showKeyForm();
refresh();
setInterval(refresh, REFRESH_MS);
