// The console: reads /api/overview every second and /api/history every
// five, and draws them. Every value goes into the page as text
// (textContent), never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const num = (n) => Math.round(n).toLocaleString("en-US");

function duration(secs) {
  if (secs < 0) return "not draining";
  if (secs < 90) return `${Math.round(secs)} s`;
  if (secs < 5400) return `${Math.round(secs / 60)} min`;
  return `${(secs / 3600).toFixed(1)} h`;
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const c of cells) {
    const td = document.createElement("td");
    td.textContent = c;
    tr.appendChild(td);
  }
  return tr;
}

function fill(tbody, rows) {
  tbody.replaceChildren(...rows.map(row));
}

function showOverview(o) {
  const banner = $("banner");
  banner.className = `banner ${o.congestion}`;
  $("congestion").textContent = o.congestion;
  $("congestion-reason").textContent = o.congestion_reason;
  $("congestion-since").textContent = o.congestion_since_unix_ms > 0
    ? `since ${new Date(o.congestion_since_unix_ms).toLocaleTimeString()}` : "";
  const runbook = o.congestion_runbook;
  $("congestion-runbook-line").hidden = !runbook;
  if (runbook) {
    const a = $("congestion-runbook");
    a.href = runbook;
    a.textContent = runbook.split("/").pop();
    $("congestion-cause").textContent = `(cause: ${o.congestion_cause})`;
  }
  for (const k of ["queued", "ready", "scheduled", "in_flight", "dead"]) {
    $(k).textContent = num(o[k]);
  }
  $("oldest").textContent = o.queued > 0 ? duration(o.oldest_queued_age_seconds) : "–";
  $("rates").textContent = `${num(o.enqueue_rate_per_second)} / ${num(o.delivery_rate_per_second)}`;
  $("eta").textContent = o.queued > 0 ? duration(o.drain_eta_seconds) : "empty";
  $("bounce").textContent = `${(o.bounce_rate_last_hour * 100).toFixed(1)} %`;
  const paused = new Set(o.paused_lanes);
  const lanes = ["transactional", "normal", "bulk"];
  // The lane rows and their buttons are made once and updated in place:
  // a button replaced every second would take the keyboard's focus away.
  const tbody = $("lanes");
  if (tbody.rows.length !== lanes.length) {
    fill(tbody, lanes.map((l) => [l, "", "", ""]));
    lanes.forEach((lane, i) => {
      const b = document.createElement("button");
      b.type = "button";
      b.id = `lane-${lane}`;
      b.addEventListener("click", async () => {
        const r = await act(b.dataset.paused === "1" ? "resume" : "pause", { lanes: [lane] });
        if (r) $("action-result").textContent = `paused lanes: ${r.paused_lanes.join(", ") || "none"}`;
        tick();
      });
      tbody.rows[i].lastChild.appendChild(b);
    });
  }
  lanes.forEach((lane, i) => {
    const cells = tbody.rows[i].cells;
    cells[1].textContent = num(o[`queued_${lane}`]);
    cells[2].textContent = paused.has(lane) ? "paused" : "on";
    const b = cells[3].firstChild;
    b.dataset.paused = paused.has(lane) ? "1" : "";
    b.textContent = paused.has(lane) ? `Resume ${lane}` : `Pause ${lane}`;
  });
  fill($("relays"), o.relays.map((r) => [r.name, r.state, num(r.sent), num(r.deferred), num(r.failed), r.reason]));
  $("webhooks-section").hidden = o.webhooks.length === 0;
  fill($("webhooks"), o.webhooks.map((w) => [w.name, w.state, `${num(w.lag_events)} events, ${duration(w.lag_seconds)}`, w.last_error]));
  $("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
}

function color(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
}

function drawChart(points) {
  const c = $("chart");
  const ctx = c.getContext("2d");
  const w = c.width, h = c.height, pad = 36;
  ctx.clearRect(0, 0, w, h);
  ctx.strokeStyle = color("--line");
  ctx.strokeRect(pad, 8, w - 2 * pad, h - pad - 8);
  ctx.fillStyle = color("--muted");
  ctx.font = "12px system-ui, sans-serif";
  // The last hour, or since the server started when that is shorter.
  const now = Date.now();
  const from = Math.max(now - 3600 * 1000, points.length ? points[0].t_ms : now - 60000);
  const x = (t) => pad + ((t - from) / Math.max(1, now - from)) * (w - 2 * pad);
  const qmax = Math.max(10, ...points.map((p) => p.queued));
  const rmax = Math.max(1, ...points.map((p) => Math.max(p.enqueue_rate, p.delivery_rate)));
  ctx.fillText(num(qmax), 2, 18);
  ctx.fillText(`${num(rmax)}/s`, w - pad + 2, 18);
  ctx.fillText(`−${duration((now - from) / 1000)}`, pad, h - 10);
  ctx.fillText("now", w - pad - 24, h - 10);
  const y = (v, max) => 8 + (1 - v / max) * (h - pad - 8);
  const line = (key, max, css) => {
    if (points.length === 0) return;
    ctx.strokeStyle = color(css);
    ctx.lineWidth = 2;
    ctx.beginPath();
    points.forEach((p, i) => (i ? ctx.lineTo : ctx.moveTo).call(ctx, x(p.t_ms), y(p[key], max)));
    // Up to now: the last point holds until the next.
    ctx.lineTo(x(now), y(points[points.length - 1][key], max));
    ctx.stroke();
  };
  // Congestion as a band along the bottom.
  for (let i = 0; i < points.length; i++) {
    const p = points[i];
    if (p.congestion === 0) continue;
    const next = points[i + 1] ? points[i + 1].t_ms : p.t_ms + 5000;
    ctx.fillStyle = color(p.congestion === 1 ? "--warn" : "--crit");
    ctx.fillRect(x(p.t_ms), h - pad - 6, Math.max(1, x(next) - x(p.t_ms)), 6);
  }
  line("queued", qmax, "--queued");
  line("enqueue_rate", rmax, "--in");
  line("delivery_rate", rmax, "--out");
  c.dataset.points = String(points.length);
}

// With auth on: the page asks for an admin token once; the session is a
// cookie the script never sees, its CSRF token is kept here.
let csrf = "";

function showLogin(why) {
  $("content").hidden = true;
  $("logout").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = why || "";
  $("updated").textContent = "not logged in";
  $("token").focus();
}

function showContent(auth) {
  $("login").hidden = true;
  $("content").hidden = false;
  $("logout").hidden = !auth;
}

async function get(path) {
  const r = await fetch(path, { credentials: "same-origin" });
  if (r.status === 401) {
    showLogin("Your session has ended: log in again.");
    throw new Error("not logged in");
  }
  if (!r.ok) throw new Error(`${path}: ${r.status}`);
  return r.json();
}

async function session() {
  const r = await fetch("/api/session", { credentials: "same-origin" });
  if (r.status === 401) {
    showLogin("");
    return;
  }
  const b = await r.json();
  csrf = b.csrf;
  showContent(b.auth);
}

$("login-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const r = await fetch("/api/login", {
    method: "POST",
    credentials: "same-origin",
    headers: { "Content-Type": "application/json", "X-Mailspool-Console": "1" },
    body: JSON.stringify({ token: $("token").value }),
  });
  $("token").value = "";
  const b = await r.json().catch(() => ({ error: `${r.status}` }));
  if (!r.ok) {
    $("login-error").textContent = b.error;
    return;
  }
  csrf = b.csrf;
  showContent(b.auth);
  tick();
  history();
});

$("logout").addEventListener("click", async () => {
  await act("/api/logout", {});
  csrf = "";
  showLogin("Logged out.");
});

async function tick() {
  if (!$("login").hidden) return;
  try {
    showOverview(await get("/api/overview"));
  } catch (e) {
    if ($("login").hidden) $("updated").textContent = `cannot reach the server (${e.message}); retrying`;
  }
}

async function history() {
  if (!$("login").hidden) return;
  try {
    drawChart((await get("/api/history")).points);
  } catch (e) { /* the overview says the server is unreachable */ }
}

// Messages: the admin API's ListMessages and ShowMessage.
let nextCursor = "";

function query(cursor) {
  const p = new URLSearchParams();
  p.set("state", $("f-state").value);
  p.set("lane", $("f-lane").value);
  p.set("domain", $("f-domain").value.trim());
  const age = $("f-min-age").value.trim();
  if (age) p.set("min_age", age);
  if (cursor) p.set("cursor", cursor);
  return p;
}

async function listMessages(cursor) {
  $("messages-error").textContent = "";
  const r = await fetch(`/api/messages?${query(cursor)}`, { credentials: "same-origin" });
  const body = await r.json();
  if (!r.ok) {
    $("messages-error").textContent = body.field ? `${body.field}: ${body.error}` : body.error;
    return;
  }
  const rows = body.messages.map((m) => {
    const tr = row(["", m.state, m.lane, m.envelope_to.join(", "), String(m.attempts), m.last_error]);
    const a = document.createElement("a");
    a.href = `#/message/${m.id}`;
    a.textContent = m.id;
    a.className = "message-link";
    tr.firstChild.appendChild(a);
    return tr;
  });
  if (cursor) $("messages").append(...rows); else $("messages").replaceChildren(...rows);
  nextCursor = body.next_cursor;
  $("next-page").hidden = !nextCursor;
}

async function showMessage(id) {
  const r = await fetch(`/api/messages/${encodeURIComponent(id)}`, { credentials: "same-origin" });
  const body = await r.json();
  if (!r.ok) {
    $("messages-error").textContent = body.error;
    return;
  }
  const m = body.message;
  $("m-id").textContent = m.id;
  $("m-state").textContent = m.state;
  $("m-lane").textContent = m.lane;
  $("m-from").textContent = m.envelope_from;
  $("m-to").textContent = m.envelope_to.join(", ");
  $("m-attempts").textContent = String(m.attempts);
  $("m-error").textContent = m.last_error;
  $("m-message-id").textContent = m.message_id;
  fill($("m-recipients"), body.recipients.map((r) => [r.address, r.state, String(r.attempts), r.last_reply]));
  fill($("m-events"), body.events.map((e) => [
    String(e.sequence), new Date(e.time_unix_ms).toISOString().replace("T", " ").slice(0, 23),
    e.type, e.recipient, e.attempt ? String(e.attempt) : "", e.relay, e.smtp_reply]));
  $("m-events-partial").hidden = !body.events_partial;
  // The headers as text: whatever a message says is never markup here.
  $("m-headers").textContent = body.headers;
  $("message").hidden = false;
  $("message").scrollIntoView({ block: "nearest" });
}

function route() {
  const m = location.hash.match(/^#\/message\/([0-9a-f]{16})$/);
  if (m) showMessage(m[1]);
}

// Actions: through the admin API's own operations. A bulk one (or one on
// a message) is a dry run first; nothing changes until it is confirmed.
async function act(op, body) {
  $("messages-error").textContent = "";
  const r = await fetch(op.startsWith("/") ? op : `/api/actions/${op}`, {
    method: "POST",
    credentials: "same-origin",
    headers: { "Content-Type": "application/json", "X-Mailspool-Console": "1", "X-CSRF-Token": csrf },
    body: JSON.stringify(body),
  });
  const out = await r.json().catch(() => ({ error: `${r.status}` }));
  if (!r.ok) {
    $("messages-error").textContent = out.field ? `${out.field}: ${out.error}` : out.error;
    return null;
  }
  return out;
}

function currentFilter() {
  const q = Object.fromEntries(query(""));
  if (q.min_age !== undefined) q.min_age = Number(q.min_age);
  return q;
}

let pending = null;

async function dryRun(op, target) {
  $("action-result").textContent = "";
  const r = await act(op, { ...target, dry_run: true });
  if (!r) return;
  pending = { op, target };
  $("confirm-text").textContent =
    `${op}: ${r.matched} match, ${r.skipped} would be left alone. Nothing has changed yet.`;
  $("confirm-sample").textContent = r.sample_ids.length ? `e.g. ${r.sample_ids.join(", ")}` : "";
  $("confirm").hidden = false;
  $("confirm").scrollIntoView({ block: "nearest" });
  $("confirm-yes").focus();
}

$("confirm-yes").addEventListener("click", async () => {
  if (!pending) return;
  const { op, target } = pending;
  pending = null;
  $("confirm").hidden = true;
  const r = await act(op, { ...target, dry_run: false });
  if (r) $("action-result").textContent = `${op}: matched ${r.matched}, affected ${r.affected}, skipped ${r.skipped}`;
  tick();
});
$("confirm-no").addEventListener("click", () => {
  pending = null;
  $("confirm").hidden = true;
  $("action-result").textContent = "nothing changed";
});
document.querySelectorAll(".bulk-action").forEach((b) =>
  b.addEventListener("click", () => dryRun(b.dataset.op, { filter: currentFilter() })));
document.querySelectorAll(".one-action").forEach((b) =>
  b.addEventListener("click", () => dryRun(b.dataset.op, { ids: [$("m-id").textContent] })));

// Top domains (qshape): queued recipients by domain and age.
async function domains() {
  let d;
  try {
    d = await get("/api/top-domains");
  } catch (e) {
    return;
  }
  const labels = d.bucket_upper_minutes.map((m, i) =>
    m === 0 ? `> ${d.bucket_upper_minutes[i - 1] || 0} min` : `≤ ${m} min`);
  const head = row(["domain", "total", ...labels]);
  head.querySelectorAll("td").forEach((td) => {
    const th = document.createElement("th");
    th.scope = "col";
    th.textContent = td.textContent;
    td.replaceWith(th);
  });
  $("domains-head").replaceChildren(head);
  const rows = d.domains.map((r) => [r.domain, num(r.total), ...r.buckets.map(num)]);
  if (d.total) rows.push(["TOTAL", num(d.total.total), ...d.total.buckets.map(num)]);
  fill($("domains"), rows);
}
$("domains-refresh").addEventListener("click", domains);

// Dead letters and the suppression list.
$("purge-form").addEventListener("submit", (e) => {
  e.preventDefault();
  dryRun("purge", { older_than: Number($("purge-age").value.trim() || "0") });
});
$("suppress-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const address = $("suppress-address").value.trim();
  const r = await act("suppress", { addresses: [address], reason: $("suppress-reason").value.trim() });
  if (r) $("action-result").textContent = `suppressed: ${r.added} added`;
  $("action-result").scrollIntoView({ block: "nearest" });
});
$("unsuppress").addEventListener("click", async () => {
  const address = $("suppress-address").value.trim();
  const r = await act("unsuppress", { addresses: [address] });
  if (r) $("action-result").textContent = `removed from the suppression list: ${r.removed}`;
});

$("filter").addEventListener("submit", (e) => { e.preventDefault(); listMessages(""); });
$("next-page").addEventListener("click", () => listMessages(nextCursor));
window.addEventListener("hashchange", route);
route();

session().then(() => {
  tick();
  history();
  domains();
});
setInterval(tick, 1000);
setInterval(history, 5000);
