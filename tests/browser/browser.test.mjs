// Opens the chat page and /docs in headless Chromium against a running server
// (BASE_URL), records every request the pages make, and fails on any that
// leaves the server's origin. Saves screenshots for the README (SCREENSHOTS).
// A second server (JWT_BASE_URL) takes bearer JWTs; a third one
// (ACCOUNTS_BASE_URL, `--accounts --store memory`, sign-up open) has accounts
// of its own: sign-up, sign-in and sign-out on the pages and in /docs.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { createHmac, randomBytes } from "node:crypto";
import { chromium } from "playwright-core";

const base = process.env.BASE_URL ?? "http://127.0.0.1:8000";
const shots = process.env.SCREENSHOTS ?? "screenshots-tmp";
const origin = new URL(base).origin;
// A second server that takes bearer JWTs signed with JWT_SECRET (HS256).
const jwtBase = process.env.JWT_BASE_URL ?? "http://127.0.0.1:8001";
const jwtSecret = process.env.JWT_SECRET ?? "";
const jwtOrigin = new URL(jwtBase).origin;
// A third server with accounts of its own (--accounts --store memory), sign-up open.
const accountsBase = process.env.ACCOUNTS_BASE_URL ?? "http://127.0.0.1:8002";
const accountsOrigin = new URL(accountsBase).origin;
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
    const ours = [origin, jwtOrigin, accountsOrigin].some((o) => url.startsWith(o));
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

// The accounts server's admin: its first account, made here unless the
// server already has accounts (then ACCOUNTS_ADMIN_USER and
// ACCOUNTS_ADMIN_PASSWORD name it). Made once, for every test that needs it.
let adminAccount;
function admin() {
  adminAccount ??= (async () => {
    const config = await (await fetch(accountsBase + "/auth/config")).json();
    assert.equal(config.accounts, true, "the server at ACCOUNTS_BASE_URL runs with --accounts");
    if (!config.first_account) {
      const username = process.env.ACCOUNTS_ADMIN_USER, password = process.env.ACCOUNTS_ADMIN_PASSWORD;
      assert.ok(username && password, "the accounts server already has accounts: start it afresh " +
        "(--store memory), or name its admin in ACCOUNTS_ADMIN_USER and ACCOUNTS_ADMIN_PASSWORD");
      return { username, password };
    }
    const account = { username: "admin" + Date.now(), password: "admin-" + randomBytes(9).toString("hex") };
    const response = await fetch(accountsBase + "/auth/register", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(account),
    });
    const text = await response.text();
    assert.equal(response.status, 201, text);
    assert.equal(JSON.parse(text).admin, true, "the first account is the admin");
    return account;
  })();
  return adminAccount;
}
// The user the chat test signs up; the dashboard test looks at its conversation.
let chatUser;

test("security headers: a strict CSP on both pages, and no violation in Chromium", async () => {
  for (const url of [base + "/", base + "/dashboard", accountsBase + "/", accountsBase + "/dashboard"]) {
    const response = await fetch(url, { headers: { accept: "text/html" } });
    assert.equal(response.status, 200, url);
    assert.equal(response.headers.get("content-type"), "text/html; charset=utf-8", url);
    const csp = response.headers.get("content-security-policy") ?? "";
    for (const directive of ["default-src 'self'", "script-src 'self'", "style-src 'self'", "frame-ancestors 'none'", "object-src 'none'"]) {
      assert.ok(csp.includes(directive), `${url}: ${directive} in ${csp}`);
    }
    assert.doesNotMatch(csp, /unsafe-inline|unsafe-eval/, url);
    assert.equal(response.headers.get("x-content-type-options"), "nosniff", url);
    assert.equal(response.headers.get("x-frame-options"), "DENY", url);
    assert.ok(response.headers.get("referrer-policy"), `${url}: a Referrer-Policy`);
    const html = await response.text();
    assert.doesNotMatch(html, /<script>|<style|\son[a-z]+=|style=|javascript:/i, `${url}: nothing inline`);
  }
  for (const [asset, type] of [["/ui/session.js", "text/javascript"], ["/ui/chat.js", "text/javascript"],
    ["/ui/dashboard.js", "text/javascript"], ["/ui/chat.css", "text/css"], ["/ui/dashboard.css", "text/css"]]) {
    const response = await fetch(base + asset);
    assert.equal(response.status, 200, asset);
    assert.equal(response.headers.get("content-type"), type + "; charset=utf-8", asset);
    assert.equal(response.headers.get("x-content-type-options"), "nosniff", asset);
  }

  // In Chromium: each page runs under its policy without a violation (nor any script error).
  const ready = {
    [base + "/"]: (p) => p.getByText("No messages yet").waitFor(),
    [base + "/dashboard"]: (p) => p.locator("#chart svg").waitFor(),
    [accountsBase + "/"]: (p) => p.locator("#sign-in").waitFor(),
    [accountsBase + "/dashboard"]: (p) => p.locator("#sign-in").waitFor(),
  };
  for (const [url, loaded] of Object.entries(ready)) {
    const p = await page({ width: 1280, height: 900 });
    const problems = [];
    p.on("console", (m) => { if (/Content Security Policy/i.test(m.text())) problems.push(m.text()); });
    p.on("pageerror", (err) => problems.push(String(err)));
    await p.goto(url);
    await loaded(p);
    assert.deepEqual(problems, [], url);
    if (url === base + "/") {
      // The policy is enforced, and a violation would have been seen: an
      // injected inline script does not run.
      const ran = await p.evaluate(() => {
        const s = document.createElement("script");
        s.textContent = "window.injected = true;";
        document.body.append(s);
        return window.injected === true;
      });
      assert.equal(ran, false, "an inline script ran");
      for (let i = 0; i < 50 && !problems.length; i++) await p.waitForTimeout(100);
      assert.match(problems.join("\n"), /Content Security Policy/);
    }
    await p.context().close();
  }
});

test("accounts: sign up on the chat page, chat, stay signed in over a reload, sign out", async () => {
  await admin(); // the first account (the admin) exists: this one is an ordinary user
  const username = "u" + Date.now(), password = "pw-" + randomBytes(9).toString("hex");
  chatUser = { username, password };
  const p = await page({ width: 390, height: 740 });
  await p.goto(accountsBase + "/");
  await p.fill("#username", username);
  await p.fill("#password", password);
  await p.fill("#display-name", "Una Tester");
  await p.click("#sign-up");
  await p.locator("#whoami", { hasText: "Signed in as " + username }).waitFor();
  assert.equal(await p.locator("#auth-form").isVisible(), false, "the sign-in form is gone");
  await p.getByText("No messages yet").waitFor();

  await p.fill("#message", "Hello!");
  await p.keyboard.press("Enter");
  await p.getByText("Hi there! How can I help you today?").waitFor();
  await p.screenshot({ path: `${shots}/chat-signed-in.png` });

  // A reload signs back in through the refresh cookie, and the conversation is there.
  await p.reload();
  await p.locator("#whoami", { hasText: "Signed in as " + username }).waitFor();
  await p.getByText("Hi there! How can I help you today?").waitFor();
  assert.equal(await p.locator(".msg.user").first().innerText().then((t) => t.split("\n")[0]), "Hello!");

  // The access token is kept in memory only; the refresh token is an HttpOnly cookie.
  const stored = await p.evaluate(() => [localStorage, sessionStorage].flatMap((s) =>
    Object.keys(s).map((k) => k + "=" + s.getItem(k))));
  assert.ok(stored.every((v) => !v.includes("eyJ")), `no token in web storage: ${stored}`);
  assert.ok(!(await p.evaluate(() => document.cookie)).includes("chatbot_refresh"), "the refresh cookie is not readable by script");
  const refresh = (await p.context().cookies()).find((c) => c.name === "chatbot_refresh");
  assert.ok(refresh, "the refresh cookie is set");
  assert.equal(refresh.httpOnly, true);
  assert.equal(refresh.sameSite, "Strict");
  assert.equal(refresh.path, "/auth");

  // Sign out: the form is back, the conversation gone, and stays so over a reload.
  await p.click("#sign-out");
  await p.locator("#sign-in").waitFor();
  assert.equal(await p.locator(".msg").count(), 0, "the conversation is cleared");
  assert.ok(!(await p.context().cookies()).some((c) => c.name === "chatbot_refresh" && c.value), "the refresh cookie is cleared");
  await p.reload();
  await p.locator("#sign-in").waitFor();
  assert.equal(await p.locator("#whoami").isVisible(), false);
  assert.equal(await p.locator(".msg").count(), 0);

  // A wrong password is refused in words; the right one, with Enter, signs in again.
  await p.fill("#username", username);
  await p.fill("#password", "not-the-password");
  await p.click("#sign-in");
  await p.getByText("Incorrect username or password").waitFor();
  await p.fill("#password", password);
  await p.press("#password", "Enter");
  await p.locator("#whoami", { hasText: "Signed in as " + username }).waitFor();
  await p.getByText("Hi there! How can I help you today?").waitFor();
  await p.context().close();
});

test("accounts: the admin signs in on the dashboard, sees the analytics and a user's conversation, signs out", async () => {
  const { username, password } = await admin();
  const p = await page({ width: 1280, height: 900 });
  await p.goto(accountsBase + "/dashboard");
  await p.fill("#username", username);
  await p.fill("#password", password);
  await p.press("#password", "Enter");
  await p.locator("#whoami", { hasText: "Signed in as " + username }).waitFor();
  await p.locator("#chart svg").waitFor();
  assert.match(await p.innerText("#total-exchanges"), /^\d+$/);
  assert.equal(await p.innerText("#error"), "");

  if (chatUser) {
    // An admin looks at an account's conversations with ?owner=account:NAME.
    await p.fill("#owner", "account:" + chatUser.username);
    await p.dispatchEvent("#owner", "change");
    await p.getByRole("button", { name: /^Open conversation / }).first().click();
    await p.locator("#conversation .msg.bot", { hasText: "Hi there! How can I help you today?" }).waitFor();
  }
  await p.screenshot({ path: `${shots}/dashboard-signed-in.png` });

  await p.click("#sign-out");
  await p.locator("#sign-in").waitFor();
  assert.equal(await p.innerText("#total-exchanges"), "–");
  await p.getByText("Sign in to see the conversations.").waitFor();
  await p.context().close();
});

test("accounts: /docs Authorize signs in with the OAuth2 password flow, Try it out sends the token", async () => {
  const { username, password } = await admin();
  const p = await page({ width: 1280, height: 900 });
  await p.goto(accountsBase + "/docs/");
  await p.getByRole("button", { name: /Authorize/ }).first().click();
  const dialog = p.locator(".modal-ux");
  await dialog.locator("#oauth_username").fill(username);
  await dialog.locator("#oauth_password").fill(password);
  // Swagger UI labels the OAuth2 form's "Authorize" button so.
  await dialog.getByRole("button", { name: "Apply given OAuth2 credentials" }).click();
  try {
    await dialog.getByRole("button", { name: "Remove authorization" }).first().waitFor({ timeout: 10_000 });
  } catch {
    assert.fail("Swagger UI did not authorize: " + (await dialog.innerText()));
  }
  await dialog.locator("button.btn-done").first().click();
  const operation = p.locator(".opblock-get", { has: p.locator(".opblock-summary-path", { hasText: /^\/auth\/me$/ }) });
  await operation.locator(".opblock-summary").click();
  await operation.getByRole("button", { name: "Try it out" }).click();
  await operation.getByRole("button", { name: "Execute" }).click();
  const status = operation.locator(".live-responses-table tbody .response-col_status");
  await status.waitFor();
  assert.equal((await status.innerText()).trim(), "200");
  assert.ok((await operation.locator(".live-responses-table tbody .response-col_description").innerText()).includes(username));
  await p.context().close();
});

test("no request left the server's origin", () => {
  assert.deepEqual(outside, []);
});
