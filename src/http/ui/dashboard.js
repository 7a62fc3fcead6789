// The dashboard (/dashboard): analytics and the conversations browser.
// Calls go through Session.request (session.js, loaded first), which adds
// the sign-in's token or the API key box's value.
"use strict";
const $ = (id) => document.getElementById(id);
const PAGE = 20;
let after = null;
// Bumped by each refresh and sign-out: answers to older calls are dropped.
let epoch = 0;

function headers() {
  return { "Accept": "application/json" };
}
// Whether a call can succeed: no accounts here, or signed in, or a key given.
function canAsk() {
  return !Session.accounts || Session.signedIn || $("key").value.trim() !== "";
}
// An answer that came after a refresh or a sign-out: nothing to show.
class Stale extends Error {}
// An admin looks at another user's conversations by adding ?owner=SUB.
function owned(path) {
  const owner = $("owner").value.trim();
  if (!owner) return path;
  return path + (path.includes("?") ? "&" : "?") + "owner=" + encodeURIComponent(owner);
}
async function call(path, options = {}) {
  const asked = epoch;
  const response = await Session.request(owned(path), { ...options, headers: headers() });
  if (asked !== epoch) throw new Stale("stale");
  if (response.status === 401) {
    throw new Error(Session.accounts
      ? "Sign in, or enter a valid API key, to see the dashboard."
      : "This server needs an API key or token: enter it above.");
  }
  if (response.status === 403) throw new Error("Only an admin may look at another owner's conversations.");
  if (response.status === 503) throw new Error("The server cannot check tokens right now; try again shortly.");
  if (response.status === 429) throw new Error("Too many requests; wait " + (response.headers.get("Retry-After") || "a few") + " s.");
  if (!response.ok && response.status !== 404) throw new Error("Error " + response.status + " from " + path);
  return response;
}
function fail(err) {
  if (!(err instanceof Stale)) $("error").textContent = err.message;
}
function cell(row, text, className) {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  row.append(td);
  return td;
}
function svg(tag, attrs, text) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  if (text !== undefined) el.textContent = text;
  return el;
}

// Bars for exchanges, a line for active sessions, drawn as SVG.
function chart(buckets, hourly) {
  const W = 640, H = 220, L = 34, B = 28, T = 10;
  const max = Math.max(1, ...buckets.map((b) => Math.max(b.exchanges, b.active_sessions)));
  const step = (W - L - 8) / Math.max(1, buckets.length);
  const y = (v) => T + (H - T - B) * (1 - v / max);
  const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, "data-buckets": buckets.length });
  for (const v of [0, max / 2, max]) {
    root.append(svg("line", { x1: L, x2: W - 4, y1: y(v), y2: y(v), stroke: "rgba(127,127,127,.3)" }));
    root.append(svg("text", { x: L - 4, y: y(v) + 3, "text-anchor": "end" }, Math.round(v)));
  }
  const points = [];
  buckets.forEach((b, i) => {
    const x = L + i * step;
    const bar = svg("rect", { class: "bar", x: x + step * 0.15, width: step * 0.7, y: y(b.exchanges), height: Math.max(0, y(0) - y(b.exchanges)),
      "data-exchanges": b.exchanges, "data-active": b.active_sessions });
    bar.append(svg("title", {}, `${b.start}: ${b.exchanges} exchanges, ${b.active_sessions} active sessions, ${b.new_sessions} new`));
    root.append(bar);
    points.push(`${x + step / 2},${y(b.active_sessions)}`);
    root.append(svg("circle", { class: "dot", cx: x + step / 2, cy: y(b.active_sessions), r: 2.5 }));
    const every = Math.ceil(buckets.length / 8);
    if (i % every === 0) {
      const label = hourly ? b.start.slice(11, 16) : b.start.slice(5, 10);
      root.append(svg("text", { x: x + step / 2, y: H - 10, "text-anchor": "middle" }, label));
    }
  });
  root.append(svg("polyline", { class: "line", points: points.join(" ") }));
  $("chart").replaceChildren(root);
}

async function loadAnalytics() {
  const bucket = $("range").value;
  const response = await call("/chat/analytics?bucket=" + bucket);
  const a = await response.json();
  $("total-exchanges").textContent = a.exchanges;
  $("total-new").textContent = a.new_sessions;
  $("fallback-share").textContent = Math.round(a.fallback_share * 100) + " %";
  chart(a.buckets, bucket === "hour");
  const unanswered = $("unanswered");
  unanswered.replaceChildren();
  for (const u of a.unanswered) {
    const li = document.createElement("li");
    li.textContent = `${u.message} (${u.count}×)`;
    unanswered.append(li);
  }
  if (!a.unanswered.length) {
    const li = document.createElement("li");
    li.className = "muted";
    li.textContent = "None: every message had a rule.";
    unanswered.append(li);
  }
  const rules = $("rules");
  rules.replaceChildren();
  for (const r of a.rules) {
    const tr = document.createElement("tr");
    cell(tr, r.rule).title = r.reply;
    cell(tr, r.exchanges, "n");
    rules.append(tr);
  }
}

// A row across the conversations table saying there is nothing to list.
function emptyRow(text) {
  const tr = document.createElement("tr");
  cell(tr, text, "muted").colSpan = 4;
  $("sessions").replaceChildren(tr);
}
function sessionRow(id, messages, last) {
  const tr = document.createElement("tr");
  cell(tr, id);
  cell(tr, messages, "n");
  cell(tr, last, "when");
  const actions = cell(tr, "", "n");
  const open = document.createElement("button");
  open.type = "button";
  open.textContent = "Open";
  open.setAttribute("aria-label", "Open conversation " + id);
  open.addEventListener("click", () => openConversation(id).catch(fail));
  actions.append(open);
  $("sessions").append(tr);
}
async function loadSessions(reset) {
  if (reset) { after = null; $("sessions").replaceChildren(); }
  const path = "/chat/sessions?limit=" + PAGE + (after ? "&after=" + encodeURIComponent(after) : "");
  const list = await (await call(path)).json();
  for (const s of list) sessionRow(s.session_id, s.total_messages, s.last_message_time);
  if (list.length) after = list[list.length - 1].session_id;
  $("more").hidden = list.length < PAGE;
  if (reset && !list.length) emptyRow("No conversations yet.");
}
async function search(event) {
  event.preventDefault();
  const q = $("search").value.trim();
  if (!q) return loadSessions(true);
  const hits = await (await call("/chat/search?q=" + encodeURIComponent(q) + "&limit=100")).json();
  $("sessions").replaceChildren();
  $("more").hidden = true;
  const seen = new Map();
  for (const h of hits) if (!seen.has(h.session_id)) seen.set(h.session_id, h);
  for (const [id, h] of seen) sessionRow(id, hits.filter((x) => x.session_id === id).length + " found", h.timestamp);
  if (!seen.size) emptyRow("Nothing found.");
}
async function download(id, format) {
  const response = await call("/chat/history/" + encodeURIComponent(id) + "/export?format=" + format);
  const blob = await response.blob();
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = "conversation-" + id + "." + ({ jsonl: "jsonl", csv: "csv", markdown: "md" })[format];
  link.click();
  URL.revokeObjectURL(link.href);
}
async function openConversation(id) {
  const box = $("conversation");
  const response = await call("/chat/history/" + encodeURIComponent(id));
  box.replaceChildren();
  const title = document.createElement("h2");
  title.textContent = "Conversation " + id;
  title.tabIndex = -1;
  box.append(title);
  if (response.status === 404) { box.append("This conversation is gone."); return; }
  for (const e of await response.json()) {
    for (const [text, who, meta] of [[e.user_message, "user", e.user_name + " · " + e.timestamp], [e.bot_reply, "bot", e.timestamp]]) {
      if (!text) continue;
      const p = document.createElement("p");
      p.className = "msg " + who;
      p.textContent = text;
      const m = document.createElement("span");
      m.className = "meta";
      m.textContent = meta;
      p.append(m);
      box.append(p);
    }
  }
  const row = document.createElement("div");
  row.className = "row";
  for (const format of ["jsonl", "csv", "markdown"]) {
    const b = document.createElement("button");
    b.type = "button";
    b.className = "secondary";
    b.textContent = "Export " + format;
    b.addEventListener("click", () => download(id, format).catch(fail));
    row.append(b);
  }
  const del = document.createElement("button");
  del.type = "button";
  del.className = "danger";
  del.textContent = "Delete conversation";
  del.addEventListener("click", async () => {
    if (!confirm("Delete conversation " + id + " for good?")) return;
    try {
      await call("/chat/history/" + encodeURIComponent(id), { method: "DELETE" });
      box.replaceChildren();
      box.textContent = "Deleted " + id + ".";
      await Promise.all([loadSessions(true), loadAnalytics()]);
    } catch (err) { fail(err); }
  });
  row.append(del);
  box.append(row);
  title.focus();
}

// Everything shown, gone: after a sign-out, or before anyone signed in.
function clearAll(text) {
  for (const id of ["total-exchanges", "total-new", "fallback-share"]) $(id).textContent = "–";
  for (const id of ["chart", "unanswered", "rules", "conversation"]) $(id).replaceChildren();
  after = null;
  $("more").hidden = true;
  emptyRow(text);
}
async function refresh() {
  epoch++;
  $("error").textContent = "";
  if (!canAsk()) {
    clearAll("Sign in to see the conversations.");
    return;
  }
  try { await Promise.all([loadAnalytics(), loadSessions(true)]); } catch (err) { fail(err); }
}
$("key").value = localStorage.getItem("chatbot.key") || "";
// Refresh only when a value really changed: a second change event (say, on
// blur) would otherwise redraw the list under a click.
$("key").addEventListener("change", () => {
  const key = $("key").value.trim();
  if (key === (localStorage.getItem("chatbot.key") || "")) return;
  localStorage.setItem("chatbot.key", key);
  refresh();
});
let owner = "";
$("owner").addEventListener("change", () => {
  if ($("owner").value.trim() === owner) return;
  owner = $("owner").value.trim();
  refresh();
});
$("range").addEventListener("change", () => loadAnalytics().catch(fail));
$("refresh").addEventListener("click", refresh);
$("search-form").addEventListener("submit", (e) => search(e).catch(fail));
$("clear-search").addEventListener("click", () => { $("search").value = ""; loadSessions(true).catch(fail); });
$("more").addEventListener("click", () => loadSessions(false).catch(fail));
// Signing in shows that account's data; signing out clears it.
Session.start({ onChange: () => { refresh(); } }).then(() => {
  refresh();
  if (Session.accounts && !Session.signedIn && !$("key").value.trim()) $("username").focus();
});
