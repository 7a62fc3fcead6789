// Opens the chat page and /docs in headless Chromium against a running server
// (BASE_URL), records every request the pages make, and fails on any that
// leaves the server's origin. Saves screenshots for the README (SCREENSHOTS).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { createHmac } from "node:crypto";
import { chromium } from "playwright-core";

const base = process.env.BASE_URL ?? "http://127.0.0.1:8000";
const shots = process.env.SCREENSHOTS ?? "screenshots-tmp";
const origin = new URL(base).origin;
// A second server that takes bearer JWTs signed with JWT_SECRET (HS256).
const jwtBase = process.env.JWT_BASE_URL ?? "http://127.0.0.1:8001";
const jwtSecret = process.env.JWT_SECRET ?? "";
const jwtOrigin = new URL(jwtBase).origin;
let browser;
const outside = [];

before(async () => {
  mkdirSync(shots, { recursive: true });
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
});
after(async () => { await browser?.close(); });

async function page(viewport) {
  const context = await browser.newContext({ viewport });
  const p = await context.newPage();
  p.on("request", (r) => {
    const url = r.url();
    const ours = url.startsWith(origin) || url.startsWith(jwtOrigin);
    if (!ours && !url.startsWith("data:") && !url.startsWith("blob:")) outside.push(url);
  });
  return p;
}

test("chat: type Hello!, press Enter, see the reply, reload, see it again", async () => {
  const p = await page({ width: 390, height: 740 }); // a phone-width screen
  await p.goto(base + "/");
  await p.getByText("No messages yet").waitFor();
  const session = await p.inputValue("#session");
  assert.ok(session.length > 8, "a fresh random session id");

  await p.fill("#message", "Hello!");
  await p.keyboard.press("Enter");
  await p.getByText("Hi there! How can I help you today?").waitFor();
  assert.match(await p.locator(".msg.bot .meta").first().innerText(), /^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$/);
  await p.screenshot({ path: `${shots}/chat.png` });

  await p.reload();
  await p.getByText("Hi there! How can I help you today?").waitFor();
  assert.equal(await p.inputValue("#session"), session, "the session id survives a reload");
  assert.equal(await p.locator(".msg.user").first().innerText().then((t) => t.split("\n")[0]), "Hello!");

  // Keyboard alone: Tab reaches the message box and the send button.
  await p.fill("#message", "What did I just say?");
  await p.focus("#message");
  await p.keyboard.press("Tab");
  assert.equal(await p.evaluate(() => document.activeElement.textContent), "Send");
  await p.keyboard.press("Enter");
  await p.getByText('You said: "Hello!"').waitFor();

  // An error shows as a readable message: a session id with a slash is refused (422).
  await p.fill("#session", "a/b");
  await p.dispatchEvent("#session", "change");
  await p.fill("#message", "hi");
  await p.keyboard.press("Enter");
  await p.getByText(/The server refused the message: String should match pattern/).waitFor();
  await p.context().close();
});

test("docs: Swagger UI lists the operations, served from this server", async () => {
  const p = await page({ width: 1280, height: 900 });
  await p.goto(base + "/docs/");
  await p.locator(".opblock-summary-path", { hasText: "/chat/history/{session_id}" }).first().waitFor();
  const paths = await p.locator(".opblock-summary-path").allInnerTexts();
  for (const path of ["/chat", "/chat/history/{session_id}", "/chat/sessions", "/chat/search", "/health"]) {
    assert.ok(paths.map((t) => t.replace(/\u200b/g, "")).includes(path), `${path} listed in ${paths}`);
  }
  await p.screenshot({ path: `${shots}/docs.png` });
  await p.context().close();
});

test("dashboard: charts of seeded traffic, search, open and delete a conversation", async () => {
  // Seed: a fresh session with a rule's answer and a question asked twice that no rule answers.
  const session = "dashboard-" + Date.now();
  for (const message of ["Hello!", "zqx unanswerable", "zqx unanswerable"]) {
    const sent = await fetch(base + "/chat", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ user_message: message, session_id: session }),
    });
    assert.equal(sent.status, 200);
  }
  const analytics = await (await fetch(base + "/chat/analytics")).json();
  assert.ok(analytics.exchanges >= 3);

  const p = await page({ width: 390, height: 844 }); // a phone-width screen
  await p.goto(base + "/dashboard");
  await p.locator("#total-exchanges", { hasText: new RegExp(`^${analytics.exchanges}$`) }).waitFor();
  const bars = await p.locator("#chart rect.bar").evaluateAll((rects) => rects.map((r) => Number(r.dataset.exchanges)));
  assert.equal(bars.length, analytics.buckets.length, "one bar per bucket");
  assert.equal(bars.reduce((a, b) => a + b, 0), analytics.exchanges, "the bars add up to the seeded traffic");
  assert.equal(await p.innerText("#fallback-share"), Math.round(analytics.fallback_share * 100) + " %");
  await p.getByText("zqx unanswerable (2×)").waitFor();
  await p.screenshot({ path: `${shots}/dashboard.png`, fullPage: true });

  // Search with the keyboard alone: type, Enter.
  await p.focus("#search");
  await p.keyboard.type("zqx");
  await p.keyboard.press("Enter");
  // "2 found" is the search's answer, not the full list shown before it.
  await p.locator("#sessions tr", { hasText: session }).filter({ hasText: "2 found" }).waitFor();
  assert.equal(await p.locator("#sessions tr").count(), 1, "only the seeded conversation matches");

  // Open it, then delete it (confirming the dialog).
  await p.getByRole("button", { name: "Open conversation " + session }).click();
  await p.locator("#conversation .msg.user", { hasText: "Hello!" }).waitFor();
  await p.locator("#conversation .msg.bot", { hasText: "Hi there! How can I help you today?" }).waitFor();
  p.once("dialog", (dialog) => dialog.accept());
  await p.getByRole("button", { name: "Delete conversation" }).click();
  await p.getByText("Deleted " + session + ".").waitFor();
  assert.equal((await fetch(base + "/chat/history/" + session)).status, 404);
  await p.context().close();
});

// An HS256 token for `sub`, as an identity provider would issue it.
function mint(sub, extra = {}) {
  assert.ok(jwtSecret.length >= 32, "JWT_SECRET (32 bytes or more) is needed for the token tests");
  const part = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  const now = Math.floor(Date.now() / 1000);
  const body = part({ alg: "HS256", typ: "JWT" }) + "." + part({ sub, iat: now, exp: now + 600, ...extra });
  return body + "." + createHmac("sha256", jwtSecret).update(body).digest("base64url");
}
const as = (token) => ({ headers: { authorization: "Bearer " + token } });

test("tokens: the chat page sends as the token's user; an admin browses that user's conversations", async () => {
  const alice = mint("alice"), bob = mint("bob"), admin = mint("support", { roles: ["admin"] });
  const p = await page({ width: 390, height: 740 });
  await p.goto(jwtBase + "/");
  const session = await p.inputValue("#session");
  await p.fill("#message", "Hello!");
  await p.keyboard.press("Enter");
  await p.getByText("This server needs an API key or token: enter it above.").waitFor();
  await p.fill("#key", alice);
  await p.dispatchEvent("#key", "change");
  await p.fill("#message", "Hello!");
  await p.keyboard.press("Enter");
  await p.getByText("Hi there! How can I help you today?").waitFor();
  const mine = await fetch(jwtBase + "/chat/history/" + session, as(alice));
  assert.equal(mine.status, 200);
  assert.equal((await fetch(jwtBase + "/chat/history/" + session, as(bob))).status, 404, "bob's is another conversation");
  await p.context().close();

  const d = await page({ width: 1280, height: 900 });
  await d.goto(jwtBase + "/dashboard");
  await d.fill("#key", bob);
  await d.dispatchEvent("#key", "change");
  await d.fill("#owner", "alice");
  await d.dispatchEvent("#owner", "change");
  await d.getByText("Only an admin may look at another owner's conversations.").first().waitFor();
  await d.fill("#key", admin);
  await d.dispatchEvent("#key", "change");
  await d.getByRole("button", { name: "Open conversation " + session }).click();
  await d.locator("#conversation .msg.bot", { hasText: "Hi there! How can I help you today?" }).waitFor();
  await d.context().close();
});

test("tokens: /docs Authorize takes a bearer token and Try it out sends it", async () => {
  const p = await page({ width: 1280, height: 900 });
  await p.goto(jwtBase + "/docs/");
  await p.getByRole("button", { name: /Authorize/ }).first().click();
  const dialog = p.locator(".modal-ux");
  await dialog.locator("#auth-bearer-value").fill(mint("carol"));
  await dialog.getByRole("button", { name: "Apply credentials" }).click();
  await dialog.getByRole("button", { name: "Close", exact: true }).click();
  const operation = p.locator(".opblock-get", { has: p.locator(".opblock-summary-path", { hasText: /^\/chat\/sessions$/ }) });
  await operation.locator(".opblock-summary").click();
  await operation.getByRole("button", { name: "Try it out" }).click();
  await operation.getByRole("button", { name: "Execute" }).click();
  const status = operation.locator(".live-responses-table tbody .response-col_status");
  await status.waitFor();
  assert.equal((await status.innerText()).trim(), "200");
  await p.context().close();
});

test("no request left the server's origin", () => {
  assert.deepEqual(outside, []);
});
