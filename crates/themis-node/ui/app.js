// Themis replication dashboard: polls this node's admin API once a second and draws it.
// No dependencies; every request goes to the node that served the page, with the
// session cookie set at /ui/login (or none when authentication is off).
"use strict";

const state = { status: null, topology: null, span: "5m", pending: null };
const $ = (id) => document.getElementById(id);
const esc = (v) => String(v ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));

async function api(path, options = {}) {
  const headers = { "x-themis-ui": "1" };
  if (options.body !== undefined) headers["content-type"] = "application/json";
  const response = await fetch(path, { credentials: "same-origin", ...options, headers });
  if (response.status === 401) {
    location.href = "/ui/login";
    throw new Error("signed out");
  }
  const text = await response.text();
  let body = text;
  try { body = JSON.parse(text); } catch (_) { /* metrics are text */ }
  if (!response.ok) {
    const leader = body && body.leader ? ` (leader: node ${body.leader})` : "";
    throw new Error(`${(body && body.message) || text}${leader}`);
  }
  return body;
}

function confirmThen(text, action) {
  $("confirm-text").textContent = text;
  state.pending = action;
  $("confirm").showModal();
}

$("confirm").addEventListener("close", async () => {
  const action = state.pending;
  state.pending = null;
  if ($("confirm").returnValue !== "ok" || !action) return;
  const out = $("op-result");
  out.textContent = "working…";
  try {
    const answer = await action();
    out.textContent = `done: ${typeof answer === "object" ? JSON.stringify(answer) : answer}`;
  } catch (e) {
    out.textContent = `refused: ${e.message}`;
  }
  refresh();
});

$("btn-election").addEventListener("click", () =>
  confirmThen("Start an election on this node? Writes pause until a leader is elected.",
    () => api("/v1/cluster/election", { method: "POST", body: "{}" })));
$("btn-transfer").addEventListener("click", () => {
  const to = Number($("transfer-to").value);
  if (!to) return;
  confirmThen(`Transfer leadership to node ${to}?`,
    () => api("/v1/cluster/transfer", { method: "POST", body: JSON.stringify({ to }) }));
});
$("btn-mode").addEventListener("click", () => {
  const mode = $("mode-select").value;
  confirmThen(`Change the acknowledgement mode to ${mode.toUpperCase()}?`,
    () => api("/v1/cluster/mode", { method: "PUT", body: JSON.stringify({ mode, min_sync_replicas: mode === "async" ? 0 : 1 }) }));
});
$("mode-select").addEventListener("change", (e) => { e.target.dataset.touched = "1"; });
$("lag-span").addEventListener("change", (e) => { state.span = e.target.value; refresh(); });

function summary(s) {
  // The mode control starts at the cluster's mode, until the operator picks another.
  const select = $("mode-select");
  if (!select.dataset.touched) {
    const mode = String(s.mode || "").split("(")[0].toLowerCase();
    if ([...select.options].some((o) => o.value === mode)) select.value = mode;
  }
  const leader = s.leader ? `node ${s.leader}` : "none known";
  $("summary").innerHTML =
    `<span><b>Node</b><span id="node-id">${esc(s.id)}</span></span>` +
    `<span><b>Role</b><span id="node-role">${esc(s.role)}</span></span>` +
    `<span><b>Leader</b><span id="leader">${esc(leader)}</span></span>` +
    `<span><b>Term</b>${esc(s.term)}</span>` +
    `<span><b>Mode</b><span id="mode">${esc(s.mode)}</span></span>` +
    `<span><b>Commit</b>${esc(s.commit_lsn)}</span><span><b>Applied</b>${esc(s.applied_lsn)}</span>`;
  const banner = $("banner");
  if (s.role !== "Leader") {
    banner.hidden = false;
    banner.textContent = `This node is a ${s.role.toLowerCase()}: replica health, lag and round trips are measured by the leader (${leader}); open its dashboard for them.`;
  } else {
    banner.hidden = true;
  }
}

function drawTopology(t, s) {
  const svg = $("topology");
  const nodes = t.nodes || [];
  const cx = 210, cy = 150, r = nodes.length > 1 ? 105 : 0;
  const pos = {};
  nodes.forEach((n, i) => {
    const a = -Math.PI / 2 + (2 * Math.PI * i) / Math.max(nodes.length, 1);
    pos[n.id] = [cx + r * Math.cos(a), cy + r * Math.sin(a)];
  });
  let out = "";
  for (const n of nodes) {
    const from = n.upstream || s.leader;
    if (!from || from === n.id || !pos[from]) continue;
    const [x1, y1] = pos[from], [x2, y2] = pos[n.id];
    const cls = n.healthy === false ? "#c62828" : "#9aa3b5";
    out += `<line x1="${x1}" y1="${y1}" x2="${x2}" y2="${y2}" stroke="${cls}" stroke-width="2" ${n.upstream ? 'stroke-dasharray="5 4"' : ""}/>`;
  }
  for (const n of nodes) {
    const [x, y] = pos[n.id];
    const fill = n.role === "leader" ? "#2f5fd0" : n.healthy === false ? "#c62828" : n.role === "learner" ? "#8e99ad" : "#1f8a4c";
    out += `<g class="topo-node" data-node="${n.id}" data-role="${esc(n.role)}" data-healthy="${n.healthy !== false}">` +
      `<circle cx="${x}" cy="${y}" r="26" fill="${fill}"/>` +
      `<text x="${x}" y="${y + 5}" text-anchor="middle" fill="#fff" font-weight="700">${n.id}</text>` +
      `<text x="${x}" y="${y + 44}" text-anchor="middle" fill="#1d2330" font-size="11">${esc(n.role)}${n.region ? " · " + esc(n.region) : ""}</text></g>`;
  }
  svg.innerHTML = out;
}

function nodesTable(t, s) {
  const replicas = {};
  for (const r of s.replicas || []) replicas[r.id] = r;
  const rows = (t.nodes || []).map((n) => {
    const r = replicas[n.id] || {};
    const health = n.healthy === undefined ? "unknown" : n.healthy ? "healthy" : "unhealthy";
    return `<tr data-node="${n.id}"><td>${n.id}</td><td>${esc(n.role)}</td><td>${esc(n.region || "")}</td>` +
      `<td class="health ${health}">${health}</td><td>${esc(n.match_lsn ?? "")}</td><td>${esc(n.lag_lsns ?? "")}</td>` +
      `<td>${esc(n.lag_ms ?? "")}</td><td>${r.rtt_us !== undefined ? (r.rtt_us / 1000).toFixed(1) : ""}</td>` +
      `<td>${esc(r.last_contact_ms ?? "")}</td><td>${esc(n.upstream ?? "")}</td></tr>`;
  });
  $("nodes").querySelector("tbody").innerHTML = rows.join("");
  const select = $("transfer-to");
  const current = select.value;
  select.innerHTML = (t.nodes || []).filter((n) => n.voter && n.id !== s.leader)
    .map((n) => `<option value="${n.id}">node ${n.id}</option>`).join("");
  if ([...select.options].some((o) => o.value === current)) select.value = current;
}

function chart(h) {
  const pts = h.points || [];
  const w = 320, ht = 110;
  const max = Math.max(1, ...pts.map((p) => p[1]));
  const t0 = pts.length ? pts[0][0] : 0, t1 = pts.length ? pts[pts.length - 1][0] : 1;
  const x = (t) => (t1 === t0 ? w : ((t - t0) / (t1 - t0)) * w);
  const line = pts.map((p) => `${x(p[0]).toFixed(1)},${(ht - (p[1] / max) * (ht - 10)).toFixed(1)}`).join(" ");
  return `<div class="chart" data-replica="${h.replica}"><h3>Replica ${h.replica}</h3>` +
    `<svg viewBox="0 0 ${w} ${ht}" preserveAspectRatio="none"><polyline fill="none" stroke="#2f5fd0" stroke-width="1.5" vector-effect="non-scaling-stroke" points="${line}"/></svg>` +
    `<div class="stats">scale: 0 to ${max} ms</div>` +
    `<div class="stats">avg ${h.avg_ms.toFixed(1)} ms · p95 ${h.p95_ms} · p99 ${h.p99_ms} · max ${h.max_ms} ms · ${h.samples} s</div></div>`;
}

function insights(list, bottlenecks) {
  $("insights").innerHTML = list.slice().reverse().slice(0, 30).map((i) =>
    `<li class="${i.resolved_ms ? "closed" : "open"}" data-kind="${i.type}"><span class="kind">${i.type}</span>` +
    `${esc(i.description)}<br><small>${esc(i.recommendation)} · ${new Date(i.at_ms).toLocaleTimeString()}` +
    `${i.resolved_ms ? " · resolved " + new Date(i.resolved_ms).toLocaleTimeString() : ""}</small></li>`).join("") ||
    "<li>No insights.</li>";
  const cell = (b, k) => b.severity[k] === undefined ? "" :
    `<span class="sev" style="width:${Math.round(b.severity[k] * 40)}px"></span>${b.severity[k].toFixed(2)}`;
  $("bottlenecks").querySelector("tbody").innerHTML = bottlenecks.map((b) =>
    `<tr><td>${b.replica ? "replica " + b.replica : "this node"}</td><td>${cell(b, "network")}</td><td>${cell(b, "disk")}</td>` +
    `<td>${cell(b, "cpu")}</td><td>${cell(b, "apply")}</td><td>${esc(b.primary || "none")}</td></tr>`).join("");
}

function links(l, c) {
  $("links").querySelector("tbody").innerHTML = (l.links || []).map((k) =>
    `<tr><td>${esc(k.name)}</td><td>${esc(k.state)}</td><td>${esc(k.lag_ms)}</td><td>${esc(k.applied_lsn)}</td><td>${esc(k.conflicts_last_hour)}</td></tr>`).join("") ||
    '<tr><td colspan="5">No links.</td></tr>';
  $("conflicts").innerHTML = (c.conflicts || []).slice(0, 20).map((x) => {
    const resolve = x.strategy === "keep_both"
      ? ` <button data-c="${esc(x.collection)}" data-id="${esc(x.id)}" data-w="0" class="resolve">keep older</button>` +
        `<button data-c="${esc(x.collection)}" data-id="${esc(x.id)}" data-w="1" class="resolve">keep newer</button>` : "";
    return `<li><span class="kind">${esc(x.strategy)}</span>${esc(x.collection)}/${esc(x.id)}: ` +
      `${esc(x.local && x.local.cluster)} vs ${esc(x.remote && x.remote.cluster)}, winner ${esc(x.winner)}${resolve}</li>`;
  }).join("") || "<li>No conflicts recorded.</li>";
  for (const b of document.querySelectorAll("button.resolve")) {
    b.addEventListener("click", () => confirmThen(`Keep sibling ${b.dataset.w} of ${b.dataset.c}/${b.dataset.id}?`,
      () => api("/v1/links/conflicts/resolve", { method: "POST",
        body: JSON.stringify({ collection: b.dataset.c, id: b.dataset.id, winner: Number(b.dataset.w) }) })));
  }
}

function metricValues(text, prefix) {
  const out = {};
  for (const line of String(text).split("\n")) {
    if (line.startsWith(prefix)) {
      const i = line.lastIndexOf(" ");
      out[line.slice(0, i)] = line.slice(i + 1);
    }
  }
  return out;
}

function facts(id, values) {
  const entries = Object.entries(values);
  $(id).innerHTML = entries.map(([k, v]) => `<dt>${esc(k)}</dt><dd>${esc(v)}</dd>`).join("") || "<dt>not configured</dt><dd></dd>";
}

function slots(s, metrics) {
  $("slots").querySelector("tbody").innerHTML = (s.slots || []).map((x) =>
    `<tr><td>${esc(x.record.config.name)}</td><td>${x.record.paused ? "paused" : x.active ? "active" : "idle"} · ${esc(x.wal_status)}</td>` +
    `<td>${esc(x.record.confirmed_flush_lsn)}</td><td>${esc(x.lag_lsn)}</td></tr>`).join("") ||
    '<tr><td colspan="4">No slots.</td></tr>';
  facts("cdc", metricValues(metrics, "themis_cdc_"));
}

function flatten(obj, prefix = "", out = {}) {
  for (const [k, v] of Object.entries(obj)) {
    if (v && typeof v === "object" && !Array.isArray(v)) flatten(v, `${prefix}${k}.`, out);
    else out[prefix + k] = Array.isArray(v) ? v.join(", ") : v;
  }
  return out;
}

function alerts(list) {
  $("alerts").innerHTML = list.slice().reverse().slice(0, 10).map((a) => {
    const [kind, detail] = typeof a.alert === "object" ? Object.entries(a.alert)[0] : [a.alert, {}];
    return `<li data-alert="${esc(kind)}"><span class="kind">${esc(kind)}</span>${esc(JSON.stringify(detail))}` +
      `<br><small>${esc(a.at_ms)} ms after start</small></li>`;
  }).join("") || "<li>No health alerts.</li>";
}

async function refresh() {
  try {
    const [full, t] = await Promise.all([api("/v1/cluster/status"), api("/v1/cluster/topology")]);
    const s = full.status;
    state.status = s;
    summary(s);
    drawTopology(t, s);
    nodesTable(t, s);
    const [lag, ins, bn] = await Promise.all([
      api(`/v1/analytics/lag?duration=${state.span}`), api("/v1/analytics/insights"), api("/v1/analytics/bottlenecks"),
    ]);
    $("lag-charts").innerHTML = lag.histories.map(chart).join("") || "<p>No history on this node (the leader keeps it).</p>";
    insights(ins.insights, bn.bottlenecks);
    alerts(full.alerts || []);
    const [l, c, sl, m] = await Promise.all([
      api("/v1/links"), api("/v1/links/conflicts?limit=20"), api("/v1/slots"), api("/metrics"),
    ]);
    links(l, c);
    slots(sl, m);
    facts("archive", full.archive ? flatten(full.archive) : {});
    $("error").hidden = true;
    document.body.dataset.loaded = "true";
  } catch (e) {
    $("error").hidden = false;
    $("error").textContent = `cannot reach the node: ${e.message}`;
  }
}

refresh();
setInterval(refresh, 1000);
