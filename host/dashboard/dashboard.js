// The poshost dashboard: polls /api/state every POLL_MS and redraws; no page reloads, no
// third-party code. Every value is written with textContent (never as HTML).
"use strict";
const POLL_MS = 1000;
const CHART_SECONDS = 600;

const $ = (id) => document.getElementById(id);
const text = (id, value) => { const el = $(id); if (el) el.textContent = value; };
const fmt = (v, digits = 0) => (v === null || v === undefined) ? "-" : Number(v).toFixed(digits);

function fillTable(id, rows, cells, key) {
  const body = $(id).tBodies[0];
  const fresh = document.createElement("tbody");
  for (const row of rows) {
    const tr = document.createElement("tr");
    if (key) tr.dataset.key = key(row);
    for (const cell of cells(row)) {
      const td = document.createElement("td");
      td.textContent = cell;
      tr.appendChild(td);
    }
    fresh.appendChild(tr);
  }
  body.replaceWith(fresh);
}

function drawChart(points, now) {
  const canvas = $("chart");
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, left = 50, bottom = 20;
  ctx.clearRect(0, 0, w, h);
  const recent = points.filter((p) => now - p[0] <= CHART_SECONDS);
  const top = Math.ceil(Math.max(4, ...recent.map((p) => p[1])) / 4) * 4;
  ctx.strokeStyle = "#ccd"; ctx.fillStyle = "#667"; ctx.font = "11px sans-serif";
  for (let i = 0; i <= 4; i++) {
    const y = (h - bottom) * (1 - i / 4);
    ctx.beginPath(); ctx.moveTo(left, y); ctx.lineTo(w, y); ctx.stroke();
    ctx.fillText(String(top * i / 4), 4, Math.max(10, y));
  }
  ctx.fillText("-10 min", left, h - 4); ctx.fillText("now", w - 24, h - 4);
  if (!recent.length) return;
  ctx.strokeStyle = "#2b6cb0"; ctx.lineWidth = 2; ctx.beginPath();
  recent.forEach((p, i) => {
    const x = left + (w - left) * (1 - (now - p[0]) / CHART_SECONDS);
    const y = (h - bottom) * (1 - p[1] / top);
    if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
  });
  ctx.stroke();
}

function render(s) {
  const w = s.window || {};
  text("rate", fmt(w.rate_per_s, 1));
  text("answered", s.answered);
  text("approval", w.approval_rate === null || w.approval_rate === undefined ? "-"
    : (w.approval_rate * 100).toFixed(1) + " %");
  text("p50", fmt(w.p50_ms, 1)); text("p95", fmt(w.p95_ms, 1)); text("p99", fmt(w.p99_ms, 1));
  text("connections", s.connections);
  text("online", s.terminals.online); text("signed-on", s.terminals.signed_on);
  const b = s.batches;
  text("batches-open", b.open || 0); text("batches-uploading", b.uploading || 0);
  text("batches-closed", b.closed || 0); text("batches-unbalanced", b.unbalanced || 0);
  text("exceptions-open", s.exceptions_open);
  text("hsm-commands", s.hsm.commands); text("hsm-errors", s.hsm.errors);
  fillTable("hsm-commands-table", Object.entries(s.hsm.by_command),
    ([name, c]) => [name, c.count, fmt(c.p99_ms, 2)]);
  text("writer-groups", s.writer.groups); text("writer-mean", fmt(s.writer.mean_group, 1));
  text("workers", s.workers || "none (one process)");
  const hsm = $("hsm-state");
  hsm.textContent = s.hsm.up === null ? "HSM ?" : (s.hsm.up ? "HSM up" : "HSM down");
  hsm.className = "badge " + (s.hsm.up === null ? "" : (s.hsm.up ? "ok" : "bad"));
  const health = $("health");
  health.textContent = s.healthy ? "healthy" : "unhealthy: " + s.health;
  health.className = "badge " + (s.healthy ? "ok" : "bad");
  const codes = Object.entries(s.codes).sort(([a], [b]) => (a < b ? -1 : 1));
  fillTable("codes", codes, ([code, n]) => [code, n], ([code]) => code);
  fillTable("terminals", s.terminals.recent,
    (t) => [t.tid, new Date(t.last_seen * 1000).toLocaleTimeString() + " (" + fmt(t.age_s) + " s ago)", t.code],
    (t) => t.tid);
  fillTable("txns", s.recent_txns,
    (t) => [String(t.created).slice(11, 19), t.tid, t.kind, t.pan_masked, (t.amount / 100).toFixed(2), t.rc]);
  fillTable("exceptions", s.recent_exceptions, (e) => [e.id, e.tid, e.batch, e.kind, e.trace || ""]);
  drawChart(s.rate, s.now);
  text("updated", new Date(s.now * 1000).toLocaleTimeString());
  document.body.dataset.updates = String(Number(document.body.dataset.updates) + 1);
  document.body.classList.remove("stale");
}

async function poll() {
  try {
    const response = await fetch("/api/state", { cache: "no-store" });
    if (!response.ok) throw new Error("HTTP " + response.status);
    render(await response.json());
  } catch (err) {
    document.body.classList.add("stale");
    text("health", "host unreachable");
    $("health").className = "badge bad";
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

poll();
