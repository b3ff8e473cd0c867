// The Velora portal: sign in with an API key (kept in sessionStorage only), then show
// the analytics and the newest events of the key's tenant through the public API.
// Hand-written, no build step; the chart is uPlot (served by the node, never a CDN).
"use strict";

const API = "/api/v2/public";
const KEY = "velora.apiKey";
const RANGES = { "24h": 24 * 3600e3, "7d": 7 * 86400e3, "30d": 30 * 86400e3 };
const COLORS = ["#1f5fbf", "#d1495b", "#2e8b57", "#edae49", "#6a4c93", "#00798c", "#8d6a9f",
  "#c06c84", "#3d5a80", "#98c1d9", "#ee6c4d", "#293241", "#9a8c98", "#4a4e69", "#f4a261",
  "#2a9d8f", "#e76f51", "#264653", "#a8dadc", "#457b9d", "#999999"];
const $ = (id) => document.getElementById(id);
const fmt = new Intl.NumberFormat("en-US");
let chart = null;
let nextCursor = null;
let current = null; // {since, until, filters}
let loads = 0; // only the latest load renders

function apiKey() { return sessionStorage.getItem(KEY); }

function setStatus(text, error = false) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "";
}

async function api(path, params) {
  const url = `${API}${path}?${new URLSearchParams(params)}`;
  const resp = await fetch(url, { headers: { Authorization: `Bearer ${apiKey()}` } });
  const body = await resp.json().catch(() => ({}));
  if (resp.status === 401) {
    signOut();
    throw new Error("The API key was refused (invalid, revoked or expired). Sign in again.");
  }
  if (!resp.ok) {
    const err = body.error || {};
    const where = (err.details || []).map((d) => `${d.field}: ${d.reason}`).join("; ");
    throw new Error(`${err.message || `HTTP ${resp.status}`}${where ? ` (${where})` : ""}`);
  }
  return body;
}

// -- range and filters ----------------------------------------------------------------

function utcInput(value) { // "2025-06-10T12:00" typed as UTC
  return value ? new Date(`${value}:00Z`) : null;
}

function toInput(date) { return date.toISOString().slice(0, 16); }

function readControls() {
  const range = document.querySelector("input[name=range]:checked").value;
  let since;
  let until;
  if (range === "custom") {
    since = utcInput($("since").value);
    until = utcInput($("until").value);
    if (!since || !until) throw new Error("Choose both ends of the custom range (UTC).");
  } else {
    until = new Date(Math.ceil(Date.now() / 60e3) * 60e3);
    since = new Date(until.getTime() - RANGES[range]);
  }
  const filters = {};
  for (const [id, name] of [["f-action", "action"], ["f-actor", "actor_id"],
    ["f-outcome", "outcome"], ["f-source", "source"]]) {
    const value = $(id).value.trim();
    if (value) filters[name] = value;
  }
  return { since: since.toISOString(), until: until.toISOString(), filters };
}

// -- rendering ------------------------------------------------------------------------

function cell(row, text, cls) {
  const td = row.insertCell();
  td.textContent = text;
  if (cls) td.className = cls;
  return td;
}

function head(table, names, caption) {
  table.replaceChildren();
  if (caption) table.createCaption().textContent = caption;
  const tr = table.createTHead().insertRow();
  for (const name of names) {
    const th = document.createElement("th");
    th.scope = "col";
    th.textContent = name;
    if (["Count", "Share", "Total"].includes(name) || name.startsWith("#")) th.className = "num";
    tr.appendChild(th);
  }
  return table.createTBody();
}

function utc(iso) { return iso.replace("T", " ").replace(/(\.\d+)?\+00:00$/, " UTC"); }

function change(c, pct) {
  if (!c || c.absolute === null) return "no previous data";
  const abs = pct ? `${(c.absolute * 100).toFixed(1)} pts` : fmt.format(c.absolute);
  const rel = c.relative === null ? "" : ` (${c.relative >= 0 ? "+" : ""}${(c.relative * 100).toFixed(1)}%)`;
  return `${c.absolute > 0 ? "▲ +" : c.absolute < 0 ? "▼ " : "= "}${abs}${rel} vs previous`;
}

function renderTiles(s) {
  const cur = s.current;
  const rate = cur.failure_rate === null ? "–" : `${(cur.failure_rate * 100).toFixed(1)}%`;
  const busiest = cur.busiest_bucket;
  const tiles = [
    ["total", "Events", cur.total, fmt.format(cur.total), change(s.change.total)],
    ["actors", "Distinct actors", cur.distinct_actors, fmt.format(cur.distinct_actors),
      change(s.change.distinct_actors)],
    ["targets", "Distinct targets", cur.distinct_targets, fmt.format(cur.distinct_targets),
      change(s.change.distinct_targets)],
    ["failure-rate", "Failure rate", cur.failure_rate, rate, change(s.change.failure_rate, true)],
    ["busiest", `Busiest ${s.interval}`, busiest ? busiest.count : null,
      busiest ? fmt.format(busiest.count) : "–", busiest ? utc(busiest.start) : "no events"],
  ];
  const dl = $("tiles");
  dl.replaceChildren();
  for (const [id, label, raw, shown, note] of tiles) {
    const box = document.createElement("div");
    box.id = `tile-${id}`;
    const dt = document.createElement("dt");
    dt.textContent = label;
    const dd = document.createElement("dd");
    dd.textContent = shown;
    dd.dataset.value = raw === null ? "" : String(raw);
    const small = document.createElement("small");
    small.textContent = note;
    dd.appendChild(small);
    box.append(dt, dd);
    dl.appendChild(box);
  }
  $("period").textContent = `${utc(cur.since)} – ${utc(cur.until)}`;
}

function renderChart(ts) {
  const series = ts.series.map((s) => ({ key: s.key, counts: s.counts }));
  if (ts.other) series.push({ key: `other (${ts.other.keys} actions)`, counts: ts.other.counts });
  const xs = ts.buckets.map((b) => Date.parse(b) / 1000);
  const box = $("chart");
  if (chart) chart.destroy();
  box.replaceChildren();
  const opts = {
    width: Math.max(280, box.clientWidth),
    height: 280,
    tzDate: (t) => uPlot.tzDate(new Date(t * 1e3), "Etc/UTC"),
    scales: { x: { time: true } },
    axes: [{}, { size: 60 }],
    series: [{ label: "UTC" }, ...series.map((s, i) => ({
      label: s.key, stroke: COLORS[i % COLORS.length], width: 2, points: { show: xs.length < 60 },
    }))],
    legend: { live: false },
  };
  chart = new uPlot(opts, [xs, ...series.map((s) => s.counts)], box);
  // the text alternative: a sentence, and every number in a table
  const top = series.slice(0, 3).map((s) => `${s.key} ${fmt.format(s.counts.reduce((a, b) => a + b, 0))}`);
  $("chart-desc").textContent = `${fmt.format(ts.total)} events in ${ts.buckets.length} ` +
    `${ts.interval} buckets (UTC)${top.length ? `; most: ${top.join(", ")}` : ""}.`;
  const body = head($("chart-table"), ["Bucket (UTC)", "Total", ...series.map((s) => s.key)],
    `Events per ${ts.interval} by action`);
  ts.buckets.forEach((b, i) => {
    const row = body.insertRow();
    row.dataset.bucket = b;
    const th = document.createElement("th");
    th.scope = "row";
    th.textContent = utc(b);
    row.appendChild(th);
    cell(row, fmt.format(ts.counts[i]), "num").dataset.value = ts.counts[i];
    for (const s of series) cell(row, fmt.format(s.counts[i]), "num").dataset.value = s.counts[i];
  });
}

function renderTop(table, top, label) {
  const body = head(table, [label, "Count", "Share"]);
  if (!top.items.length) {
    cell(body.insertRow(), "No events in this range.").colSpan = 3;
    return;
  }
  for (const item of top.items) {
    const row = body.insertRow();
    row.dataset.key = item.key;
    cell(row, item.key);
    cell(row, fmt.format(item.count), "num").dataset.value = item.count;
    cell(row, `${(item.share * 100).toFixed(1)}%`, "num");
  }
}

function appendEvents(page, fresh) {
  const table = $("events");
  const body = fresh ? head(table, ["Time (UTC)", "Action", "Actor", "Outcome", "Source", "Targets"])
    : table.tBodies[0];
  for (const e of page.events) {
    const row = body.insertRow();
    row.dataset.eventId = e.event_id;
    cell(row, utc(e.occurred_at));
    cell(row, e.action);
    cell(row, `${e.actor.id} (${e.actor.type})`);
    cell(row, e.outcome.result);
    cell(row, e.source);
    cell(row, e.targets.map((t) => `${t.type}:${t.id}`).join(", "));
  }
  if (fresh && !page.events.length) cell(body.insertRow(), "No events in this range.").colSpan = 6;
  nextCursor = page.page.next_cursor;
  $("more").hidden = nextCursor === null;
}

// -- loading --------------------------------------------------------------------------

async function load() {
  try {
    current = readControls();
  } catch (err) {
    setStatus(err.message, true);
    return;
  }
  const base = { since: current.since, until: current.until, ...current.filters };
  const mine = ++loads;
  document.body.dataset.loaded = "false";
  setStatus("Loading…");
  try {
    const [summary, ts, actors, actions, events] = await Promise.all([
      api("/analytics/summary", base),
      api("/analytics/timeseries", { ...base, group_by: "action" }),
      api("/analytics/top", { ...base, dimension: "actor", limit: 10 }),
      api("/analytics/top", { ...base, dimension: "action", limit: 10 }),
      api("/audit/events", { ...base, limit: 25 }),
    ]);
    if (mine !== loads) return; // a newer range or filter was applied meanwhile
    renderTiles(summary);
    renderChart(ts);
    renderTop($("top-actors"), actors, "Actor");
    renderTop($("top-actions"), actions, "Action");
    appendEvents(events, true);
    setStatus(`Updated ${new Date().toISOString().slice(11, 19)} UTC.`);
    document.body.dataset.loaded = "true";
  } catch (err) {
    if (mine === loads) setStatus(err.message, true);
  }
}

async function loadMore() {
  if (!current || nextCursor === null) return;
  const params = { since: current.since, until: current.until, ...current.filters,
    limit: 25, cursor: nextCursor };
  try {
    appendEvents(await api("/audit/events", params), false);
  } catch (err) {
    setStatus(err.message, true);
  }
}

function signOut() {
  sessionStorage.removeItem(KEY);
  $("dashboard").hidden = true;
  $("sign-out").hidden = true;
  $("sign-in").hidden = false;
}

function signedIn() {
  $("sign-in").hidden = true;
  $("dashboard").hidden = false;
  $("sign-out").hidden = false;
  load();
}

$("sign-in-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const key = $("api-key").value.trim();
  if (!key) return;
  sessionStorage.setItem(KEY, key);
  $("api-key").value = "";
  signedIn();
});
$("sign-out").addEventListener("click", signOut);
$("controls").addEventListener("submit", (ev) => { ev.preventDefault(); load(); });
$("more").addEventListener("click", loadMore);
for (const radio of document.querySelectorAll("input[name=range]")) {
  radio.addEventListener("change", () => {
    const custom = radio.value === "custom" && radio.checked;
    $("custom").hidden = !custom;
    if (custom && !$("since").value) {
      const until = new Date(Math.ceil(Date.now() / 60e3) * 60e3);
      $("until").value = toInput(until);
      $("since").value = toInput(new Date(until.getTime() - RANGES["24h"]));
    }
  });
}
let resizeTimer = null;
window.addEventListener("resize", () => {
  clearTimeout(resizeTimer);
  resizeTimer = setTimeout(() => {
    if (chart) chart.setSize({ width: Math.max(280, $("chart").clientWidth), height: 280 });
  }, 100);
});
if (apiKey()) signedIn();
