// The fleet page: rows from /events (server-sent events: one snapshot, then the rows that
// changed each second), drawn as a tree root -> hubs -> members. No build step, no library.
"use strict";

const nodes = new Map(); // id -> row, as the agent sends it
let serverOffset = 0; // server clock minus this browser's, in ms
let own = null;

const esc = (text) => String(text ?? "").replace(/[&<>"']/g, (c) =>
  ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);

function age(ms) {
  if (ms == null) return "never";
  const s = Math.max(0, Math.round((Date.now() + serverOffset - ms) / 1000));
  if (s < 90) return s + " s";
  if (s < 5400) return Math.round(s / 60) + " min";
  if (s < 172800) return Math.round(s / 3600) + " h";
  return Math.round(s / 86400) + " d";
}

function pct(v) { return typeof v === "number" ? v.toFixed(0) + " %" : "–"; }

function link(name, l) {
  if (!l) return "";
  return `<span class="${l.connected ? "up" : "down"}" title="${esc(name)} since ${esc(l.since)}">` +
    `${esc(name)} ${l.connected ? "up" : "down"}</span> `;
}

function expires(text) {
  if (!text) return "–";
  const left = (Date.parse(text) - Date.now() - serverOffset) / 86400000;
  if (Number.isNaN(left)) return esc(text);
  return left < 1 ? `<span class="down">${esc(text)}</span>` : `${left.toFixed(0)} d`;
}

// The node's event registry hash, short; marked when it is not this node's (the node
// validates events differently: docs/events.md).
function registry(h) {
  const hash = h.events_registry;
  if (!hash) return "";
  const mine = nodes.has(own) ? (nodes.get(own).health || {}).events_registry : null;
  const drift = mine && hash !== mine;
  const short = String(hash).replace(/^sha256:/, "").slice(0, 8);
  return ` <small class="${drift ? "registry down" : "registry"}" title="event registry ${esc(hash)}` +
    `${drift ? ", not this node's" : ""}">${drift ? "registry " : ""}${esc(short)}</small>`;
}

// The running config's sync state (docs/remote-config.md); marked unless it is the desired
// document's or the box's own.
function configState(h) {
  const c = h.config;
  if (!c || !c.state) return "";
  const bad = ["refused", "rolled_back", "drifted"].includes(c.state);
  const version = c.version ? `v${c.version}` : "local";
  const title = c.cause || (c.errors || []).join("; ") || `config ${c.hash || ""}`;
  return ` <small class="${bad ? "config down" : "config"}" title="${esc(title)}">` +
    `config ${esc(version)}${c.state === "desired" || c.state === "local" ? "" : " " + esc(c.state)}</small>`;
}

function sparkline(points) {
  if (!points.length) return "";
  const values = points.map((p) => p[1]);
  const lo = Math.min(...values), hi = Math.max(...values);
  const span = hi - lo || 1;
  const step = points.length > 1 ? 60 / (points.length - 1) : 0;
  const xy = values.map((v, i) => `${(i * step).toFixed(1)},${(15 - ((v - lo) / span) * 14).toFixed(1)}`);
  return `<svg viewBox="0 0 60 16" aria-hidden="true"><polyline points="${xy.join(" ")}"/></svg>`;
}

function readings(list) {
  return (list || []).map((r) => {
    const last = r.points.length ? r.points[r.points.length - 1][1] : null;
    return `<span class="reading" title="${esc(r.name)}">${sparkline(r.points)}` +
      `<small>${esc(r.name)}</small> ${last == null ? "" : esc(+last.toFixed(2))} ${esc(r.unit)}</span>`;
  }).join("");
}

function cells(row, depth) {
  const h = row.health || {};
  const outbox = h.outbox ? `${h.outbox.depth ?? 0}` + (h.outbox.depth ? ` (${h.outbox.oldest_age_secs ?? 0} s)` : "") : "–";
  const iot = h.iot;
  const dead = iot && iot.dead_lettered
    ? Object.values(iot.dead_lettered).reduce((a, b) => a + (+b || 0), 0) : (iot ? 0 : "–");
  const causes = (h.causes || []).map((c) => `<span class="cause">${esc(c.kind)}: ${esc(c.cause)}</span>`).join("");
  const census = h.children ? ` <small>(${h.children.online} online, ${h.children.offline} offline)</small>` : "";
  return `<td class="depth${depth}">${esc(row.id)} <small>${esc(row.mode)}</small>${census}</td>` +
    `<td class="${esc(row.status)}"><span class="dot"></span>${esc(row.status)}${causes}</td>` +
    `<td class="num age">${age(row.heard_ms)}</td>` +
    `<td class="num">${pct(h.cpu_pct)}</td><td class="num">${pct(h.mem_pct)}</td><td class="num">${pct(h.disk_pct)}</td>` +
    `<td class="num">${outbox}</td>` +
    `<td>${link("uplink", h.uplink)}${link("local", h.local)}</td>` +
    `<td class="num">${iot ? `${iot.received} / ${iot.forwarded} ${iot.connected ? "" : '<span class="down">broker down</span>'}` : "–"}</td>` +
    `<td class="num">${dead}</td>` +
    `<td>${expires(h.token_expires)}</td>` +
    `<td>${esc(h.agent_version || "–")}${registry(h)}${configState(h)}</td>` +
    `<td>${readings(row.readings)}</td>`;
}

// Tree order: this node, then each child (hubs, and members under their hub).
function ordered() {
  const byParent = new Map();
  for (const row of nodes.values()) {
    if (row.id === own) continue;
    const parent = row.parent && nodes.has(row.parent) && row.parent !== row.id ? row.parent : own;
    if (!byParent.has(parent)) byParent.set(parent, []);
    byParent.get(parent).push(row);
  }
  const out = [];
  const walk = (id, depth) => {
    const kids = (byParent.get(id) || []).sort((a, b) => a.id.localeCompare(b.id));
    for (const kid of kids) {
      out.push([kid, Math.min(depth, 2)]);
      if (depth < 3) walk(kid.id, depth + 1);
    }
  };
  if (nodes.has(own)) out.push([nodes.get(own), 0]);
  walk(own, 1);
  return out;
}

function rowElement(row, depth) {
  const tr = document.createElement("tr");
  tr.dataset.id = row.id;
  tr.dataset.status = row.status;
  tr.dataset.depth = depth;
  tr.className = `${row.mode} ${row.status}`;
  tr.innerHTML = cells(row, depth);
  return tr;
}

function renderAll() {
  const started = performance.now();
  const body = document.getElementById("rows");
  const fragment = document.createDocumentFragment();
  for (const [row, depth] of ordered()) fragment.appendChild(rowElement(row, depth));
  body.replaceChildren(fragment);
  const ms = performance.now() - started;
  document.body.dataset.renderMs = ms.toFixed(1);
  document.body.dataset.rows = String(nodes.size);
  document.getElementById("render").textContent = `${nodes.size} nodes drawn in ${ms.toFixed(0)} ms`;
  summary();
}

function summary() {
  const count = {};
  for (const row of nodes.values()) count[row.status] = (count[row.status] || 0) + 1;
  document.getElementById("summary").textContent = ["healthy", "degraded", "offline", "unknown"]
    .map((s) => `${count[s] || 0} ${s}`).join(" · ");
}

function apply(message, full) {
  serverOffset = message.now_ms - Date.now();
  own = message.node;
  document.getElementById("node").textContent = message.node;
  if (full) nodes.clear();
  let reorder = full;
  for (const row of message.rows) {
    const before = nodes.get(row.id);
    if (!before || before.parent !== row.parent) reorder = true;
    nodes.set(row.id, row);
  }
  for (const id of message.gone || []) { nodes.delete(id); reorder = true; }
  if (reorder) return renderAll();
  const started = performance.now();
  for (const row of message.rows) {
    const tr = document.querySelector(`tr[data-id="${CSS.escape(row.id)}"]`);
    if (!tr) { renderAll(); return; }
    tr.replaceWith(rowElement(row, +tr.dataset.depth));
  }
  document.body.dataset.updateMs = (performance.now() - started).toFixed(1);
  summary();
}

function connect() {
  const events = new EventSource("events");
  const state = document.getElementById("stream");
  events.addEventListener("snapshot", (e) => { apply(JSON.parse(e.data), true); state.textContent = "live"; });
  events.addEventListener("update", (e) => apply(JSON.parse(e.data), false));
  events.onerror = () => { state.textContent = "reconnecting…"; };
}

// Ages move without the server: redraw them every second.
setInterval(() => {
  for (const tr of document.querySelectorAll("#rows tr")) {
    const row = nodes.get(tr.dataset.id);
    const cell = tr.querySelector("td.age");
    if (row && cell) cell.textContent = age(row.heard_ms);
  }
}, 1000);

connect();
