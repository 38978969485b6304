// zhisuan charts shared by the operator page and the tenant console:
// stacked vertical bars drawn as SVG, one bar per bucket. No framework, no CDN.
"use strict";

const zhisuanCharts = (() => {
  const SVG_NS = "http://www.w3.org/2000/svg";

  function svg(tag, attrs, content) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
    if (content !== undefined) node.textContent = content;
    return node;
  }

  // One bar per item of `points`, stacked from `parts` (functions of a
  // point); every bar has its value and unit in a tooltip, the tallest is
  // labelled, and about a dozen buckets carry their `label`.
  function stacked(id, points, label, parts, colours, unit, names, empty) {
    const chart = document.getElementById(id);
    const W = 560, H = 150, left = 8, bottom = 18, top = 16;
    chart.setAttribute("viewBox", `0 0 ${W} ${H}`);
    const totals = points.map((p) => parts.reduce((s, f) => s + Math.max(0, f(p)), 0));
    const max = Math.max(...totals, 0);
    const slot = (W - left) / Math.max(points.length, 1);
    const nodes = [];
    points.forEach((p, i) => {
      let y = H - bottom;
      parts.forEach((f, k) => {
        const v = Math.max(0, f(p));
        const h = max > 0 ? (v / max) * (H - bottom - top) : 0;
        y -= h;
        const r = svg("rect", { x: left + i * slot + 1, y, width: Math.max(slot - 2, 1), height: h, fill: colours[k % colours.length], class: "bar" });
        const who = names ? names[k] + " " : "";
        r.appendChild(svg("title", {}, `${label(p)} ${who}${unit(v)}`));
        nodes.push(r);
      });
      if (i % Math.ceil(points.length / 12) === 0) {
        nodes.push(svg("text", { x: left + i * slot + slot / 2, y: H - 4, "text-anchor": "middle", class: "tick" }, label(p)));
      }
    });
    nodes.push(svg("text", { x: W - 4, y: 11, "text-anchor": "end", class: "peak" }, max > 0 ? "最高 max " + unit(max) : empty || "无用量 no use yet"));
    chart.replaceChildren(...nodes);
  }

  return { stacked };
})();
