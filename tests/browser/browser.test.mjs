// Opens the chat page and /docs in headless Chromium against a running server
// (BASE_URL), records every request the pages make, and fails on any that
// leaves the server's origin. Saves screenshots for the README (SCREENSHOTS).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { chromium } from "playwright-core";

const base = process.env.BASE_URL ?? "http://127.0.0.1:8000";
const shots = process.env.SCREENSHOTS ?? "screenshots-tmp";
const origin = new URL(base).origin;
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
    if (!url.startsWith(origin) && !url.startsWith("data:") && !url.startsWith("blob:")) outside.push(url);
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

test("no request left the server's origin", () => {
  assert.deepEqual(outside, []);
});
