// The chat page (/): one conversation, sent and read back through /chat and
// /chat/history. Calls go through Session.request (session.js, loaded
// first), which adds the sign-in's token or the API key box's value.
"use strict";
const $ = (id) => document.getElementById(id);
const log = $("log"), errorBox = $("error"), message = $("message");
const fields = { session: "chatbot.session", name: "chatbot.name", key: "chatbot.key" };
// Each load of the history counts; an answer to an older one is dropped.
let loading = 0;

function randomId() {
  return crypto.randomUUID ? crypto.randomUUID() : "s-" + Math.random().toString(36).slice(2) + Date.now().toString(36);
}
function headers() {
  return { "Content-Type": "application/json", "Accept": "application/json" };
}
// Whether a call can succeed: no accounts here, or signed in, or a key given.
function canAsk() {
  return !Session.accounts || Session.signedIn || $("key").value.trim() !== "";
}
function notice(text) {
  const li = document.createElement("li");
  li.className = "empty";
  li.textContent = text;
  log.replaceChildren(li);
}
function show(text, who, meta) {
  log.querySelector(".empty")?.remove();
  const li = document.createElement("li");
  li.className = "msg " + who;
  li.textContent = text;
  if (meta) {
    const m = document.createElement("span");
    m.className = "meta";
    m.textContent = meta;
    li.append(m);
  }
  log.append(li);
  li.scrollIntoView({ block: "end" });
}
async function explain(response) {
  let detail = "";
  try {
    const body = await response.json();
    detail = Array.isArray(body.detail) ? body.detail.map((d) => d.msg + (d.loc ? " (" + d.loc.slice(1).join(".") + ")" : "")).join("; ") : body.detail;
  } catch (_) { /* not JSON */ }
  switch (response.status) {
    case 401: return Session.accounts
      ? "Sign in, or enter a valid API key, to chat."
      : "This server needs an API key or token: enter it above.";
    case 413: return "That message is too large. " + (detail || "");
    case 422: return "The server refused the message: " + detail;
    case 429: return "Too many messages; wait " + (response.headers.get("Retry-After") || "a few") + " s and try again.";
    case 503: return (detail || "The server is unavailable") + ". Your message was not saved; try again shortly.";
    default: return "Error " + response.status + (detail ? ": " + detail : "");
  }
}
async function loadHistory() {
  const mine = ++loading;
  log.replaceChildren();
  errorBox.textContent = "";
  if (!canAsk()) {
    notice("Sign in to see your conversation.");
    return;
  }
  const id = $("session").value.trim();
  try {
    const response = await Session.request("/chat/history/" + encodeURIComponent(id), { headers: headers() });
    if (mine !== loading) return;
    if (response.status === 404) {
      notice("No messages yet. Say hello!");
      return;
    }
    if (!response.ok) { errorBox.textContent = await explain(response); return; }
    const entries = await response.json();
    if (mine !== loading) return;
    for (const e of entries) {
      show(e.user_message, "user", e.user_name + " · " + e.timestamp);
      show(e.bot_reply, "bot", e.timestamp);
    }
  } catch (err) {
    if (mine === loading) errorBox.textContent = "Cannot reach the server: " + err.message;
  }
}
async function send(event) {
  event.preventDefault();
  const text = message.value;
  if (!text.trim()) return;
  errorBox.textContent = "";
  const body = { user_message: text, session_id: $("session").value.trim() };
  if ($("name").value.trim()) body.user_name = $("name").value.trim();
  try {
    const response = await Session.request("/chat", { method: "POST", headers: headers(), body: JSON.stringify(body) });
    if (!response.ok) { errorBox.textContent = await explain(response); return; }
    const reply = await response.json();
    message.value = "";
    show(reply.user_message, "user", reply.user_name + " · " + reply.timestamp);
    show(reply.bot_reply, "bot", reply.timestamp);
  } catch (err) {
    errorBox.textContent = "Cannot reach the server: " + err.message;
  }
  message.focus();
}
for (const [id, storageKey] of Object.entries(fields)) {
  $(id).value = localStorage.getItem(storageKey) || "";
  // Only a real change reloads: a second change event (on blur) would load
  // the history again while a message is being sent, and show it twice.
  $(id).addEventListener("change", () => {
    const value = $(id).value.trim();
    if (value === (localStorage.getItem(storageKey) || "")) return;
    localStorage.setItem(storageKey, value);
    if (id !== "name") loadHistory();
  });
}
if (!$("session").value) {
  $("session").value = randomId();
  localStorage.setItem(fields.session, $("session").value);
}
$("new").addEventListener("click", () => {
  $("session").value = randomId();
  localStorage.setItem(fields.session, $("session").value);
  loadHistory();
  message.focus();
});
$("send").addEventListener("submit", send);
// Signing in shows that account's conversation; signing out clears it.
Session.start({
  onChange: (signedIn) => {
    loadHistory();
    if (signedIn) message.focus();
  },
}).then(() => {
  loadHistory();
  if (Session.accounts && !Session.signedIn && !$("key").value.trim()) $("username").focus();
});
message.focus();
