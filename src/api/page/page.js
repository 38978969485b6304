// zhisuan live page: reads /metrics (Prometheus text format) and draws SVG
// bar charts. No framework, no CDN: everything comes from this origin.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";
const REFRESH_MS = 5000;
// The admin or scrape key, for the series with a `tenant` label (kept in
// this tab only; without it /metrics leaves those series out).
const KEY = "zhisuan.page.key";
const COLORS = ["#2f6fb3", "#3fa34d", "#e0a020", "#c9483b", "#7a5cc0", "#2aa6a6", "#8a8f98"];

// Parses Prometheus text exposition into {name: [{labels, value}]}.
function parseMetrics(text) {
  const out = {};
  const labelRe = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    if (!line || line.startsWith("#")) continue;
    let name, labels = {}, rest;
    const brace = line.indexOf("{");
    const space = line.indexOf(" ");
    if (brace !== -1 && (space === -1 || brace < space)) {
      name = line.slice(0, brace);
      const close = line.lastIndexOf("}");
      const body = line.slice(brace + 1, close);
      let m;
      labelRe.lastIndex = 0;
      while ((m = labelRe.exec(body)) !== null) {
        labels[m[1]] = m[2].replace(/\\"/g, '"').replace(/\\n/g, "\n").replace(/\\\\/g, "\\");
      }
      rest = line.slice(close + 1).trim();
    } else {
      name = line.slice(0, space);
      rest = line.slice(space + 1).trim();
    }
    const value = parseFloat(rest.split(/\s+/)[0]);
    if (!Number.isFinite(value)) continue;
    (out[name] = out[name] || []).push({ labels, value });
  }
  return out;
}

// Sums a metric's samples grouped by the given label names; returns Map key → value.
function sumBy(metrics, name, keys) {
  const groups = new Map();
  for (const s of metrics[name] || []) {
    const key = keys.map((k) => s.labels[k] || "").join(" / ");
    groups.set(key, (groups.get(key) || 0) + s.value);
  }
  return groups;
}

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
  const plotW = width - labelW - 70;
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
    const total = totals[r];
    const shown = opts.percent ? (total * 100).toFixed(0) + "%" : fmt(total) + (opts.suffix || "");
    svg.appendChild(el("text", { x: x + 6, y: y + 13, class: "value" }, shown));
  });
}

function rowsFrom(map, scale) {
  return [...map.entries()]
    .sort((a, b) => a[0].localeCompare(b[0]))
    .map(([label, v]) => ({ label, values: [v * (scale || 1)] }));
}

function render(metrics) {
  // Tenants' series come only with a key: say so instead of "no data".
  const tenantOpts = (o) => Object.assign({}, o, sessionStorage.getItem(KEY) ? {} : { empty: "sign in above (admin or scrape key) to see tenants" });
  // GPU use by region: allocated stacked with the rest of the installed GPUs.
  const installed = sumBy(metrics, "zhisuan_region_gpus", ["region"]);
  const allocated = sumBy(metrics, "zhisuan_region_gpus_allocated", ["region"]);
  const regions = [...installed.keys()].sort();
  barChart("chart-region-gpus",
    regions.map((r) => {
      const a = allocated.get(r) || 0;
      return { label: r, values: [a, Math.max(0, installed.get(r) - a)] };
    }),
    [{ name: "allocated", color: COLORS[0] }, { name: "free", color: "#d5dbe3" }],
    { suffix: " GPUs" });

  barChart("chart-region-green", rowsFrom(sumBy(metrics, "zhisuan_region_green_share", ["region"])),
    [{ name: "green share", color: COLORS[1] }], { max: 1, percent: true });
  barChart("chart-region-carbon", rowsFrom(sumBy(metrics, "zhisuan_region_carbon_kg_total", ["region"])),
    [{ name: "kg CO₂", color: "#8a8f98" }], { suffix: " kg" });

  // Spend: voucher-covered and net payable stack to the gross charge.
  const voucher = sumBy(metrics, "zhisuan_tenant_voucher_redeemed_fen_total", ["tenant"]);
  const net = sumBy(metrics, "zhisuan_tenant_net_fen_total", ["tenant"]);
  const tenants = [...new Set([...voucher.keys(), ...net.keys()])].sort();
  barChart("chart-tenant-spend",
    tenants.map((t) => ({ label: t, values: [(voucher.get(t) || 0) / 100, (net.get(t) || 0) / 100] })),
    [{ name: "voucher-covered", color: COLORS[1] }, { name: "net payable", color: COLORS[2] }],
    tenantOpts({ suffix: " CNY" }));

  barChart("chart-vouchers", rowsFrom(sumBy(metrics, "zhisuan_voucher_balance_fen", ["tenant", "voucher"]), 0.01),
    [{ name: "balance", color: COLORS[4] }], tenantOpts({ suffix: " CNY" }));

  const tokens = sumBy(metrics, "zhisuan_tenant_tokens_total", ["tenant", "tier"]);
  const tiers = [...new Set([...tokens.keys()].map((k) => k.split(" / ")[1]))].sort();
  const tokenTenants = [...new Set([...tokens.keys()].map((k) => k.split(" / ")[0]))].sort();
  barChart("chart-tokens",
    tokenTenants.map((t) => ({ label: t, values: tiers.map((tier) => tokens.get(`${t} / ${tier}`) || 0) })),
    tiers.map((tier, i) => ({ name: tier, color: COLORS[i] })), tenantOpts({}));

  barChart("chart-pending", rowsFrom(sumBy(metrics, "zhisuan_pending_jobs", ["reason"])),
    [{ name: "jobs", color: COLORS[3] }]);
}

async function refresh() {
  const status = document.getElementById("status");
  try {
    const key = sessionStorage.getItem(KEY);
    const headers = key ? { Authorization: "Bearer " + key } : {};
    const resp = await fetch("/metrics", { cache: "no-store", headers });
    if (resp.status === 401 && key) {
      sessionStorage.removeItem(KEY);
      showKeyForm();
      throw new Error("the key was refused (wrong or revoked); tenants' series need the admin or scrape key");
    }
    if (!resp.ok) throw new Error(`/metrics answered ${resp.status}`);
    const metrics = parseMetrics(await resp.text());
    render(metrics);
    await refreshSeries(key);
    status.className = "status";
    status.textContent = `updated ${new Date().toLocaleTimeString()} · refreshes every ${REFRESH_MS / 1000} s`;
    document.body.dataset.rendered = "true";
  } catch (e) {
    status.className = "status error";
    status.textContent = `cannot read /metrics: ${e.message}`;
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
