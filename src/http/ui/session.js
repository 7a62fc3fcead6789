// Sign-in, sign-up and sign-out for the chat page and the dashboard, when
// the server has accounts of its own (GET /auth/config says so).
//
// The access token lives in this script's memory only, never in
// localStorage or sessionStorage, so a script injected into the page finds
// nothing stored to steal. The refresh token is an HttpOnly cookie (path
// /auth, SameSite=Strict) that no script can read: a reload signs back in
// through POST /auth/refresh. The access token is renewed shortly before it
// expires, and once more when the API answers 401.
//
// Without accounts the panel stays hidden and requests carry the API key
// box's value, as before. The pages use Session.request() for every call.
"use strict";
const Session = (() => {
  const $ = (id) => document.getElementById(id);
  const JSON_HEADERS = { "Content-Type": "application/json", "Accept": "application/json" };
  const ENDED = "Your sign-in has ended: sign in again.";
  let config = { accounts: false, signup: "closed", first_account: false };
  let access = null; // the access token: in memory only
  let me = null; // GET /auth/me's answer
  let timer = 0;
  let renewing = null; // the refresh under way: one at a time, as each rotates the cookie
  let onChange = () => {};

  function canSignUp() {
    return config.first_account || config.signup === "open" || config.signup === "approval";
  }
  function status(text) {
    $("auth-status").textContent = text;
  }
  function sentence(text) {
    return /[.!?]$/.test(text) ? text : text + ".";
  }
  async function detailOf(response) {
    try {
      const body = await response.json();
      if (Array.isArray(body.detail)) {
        return body.detail.map((d) => d.msg + (Array.isArray(d.loc) && d.loc.length > 1 ? " (" + d.loc.slice(1).join(".") + ")" : "")).join("; ");
      }
      return typeof body.detail === "string" ? body.detail : "";
    } catch (_) {
      return ""; // not JSON
    }
  }
  // A refused sign-in or sign-up, in words.
  async function explain(response, signingUp) {
    const detail = await detailOf(response);
    switch (response.status) {
      case 401:
        // "Account disabled" says more than the usual answer.
        return detail && !/incorrect username or password/i.test(detail) ? sentence(detail) : "Incorrect username or password.";
      case 403:
        return sentence(detail || (signingUp ? "Sign-up is closed" : "This account cannot sign in"));
      case 409:
        return "That username is taken: choose another.";
      case 422:
        return "The server refused " + (signingUp ? "the new account" : "the sign-in") + ": " + sentence(detail || "invalid input") +
          (signingUp ? " A username has 3 to 32 letters, digits, dots, dashes or underscores; a password 8 to 128 characters." : "");
      case 429:
        return "Too many sign-in attempts; wait " + (response.headers.get("Retry-After") || "a few") + " s and try again.";
      case 503:
        return sentence(detail || "Sign-in is unavailable; try again shortly");
      default:
        return "Error " + response.status + (detail ? ": " + detail : "");
    }
  }
  // fetch, with a network failure as an Error a person can read.
  async function post(url, init) {
    try {
      return await fetch(url, { method: "POST", credentials: "same-origin", ...init });
    } catch (err) {
      throw new Error("Cannot reach the server: " + err.message);
    }
  }

  // An answer of /auth/token or /auth/refresh: keep the access token and
  // renew it a little before it expires.
  function keep(token) {
    if (!token || typeof token.access_token !== "string") throw new Error("No access token in the answer");
    access = token.access_token;
    const life = Number(token.expires_in) > 0 ? Number(token.expires_in) : 900;
    clearTimeout(timer);
    timer = setTimeout(scheduledRenew, (life - Math.min(60, life / 5)) * 1000);
  }
  // POST /auth/refresh with the cookie: "ok", "out" (no valid refresh
  // cookie: signed out) or "error" (the server could not say).
  function renew() {
    if (!renewing) renewing = refreshOnce().finally(() => { renewing = null; });
    return renewing;
  }
  async function refreshOnce() {
    let response;
    try {
      response = await fetch("/auth/refresh", { method: "POST", credentials: "same-origin", headers: JSON_HEADERS, body: "{}" });
    } catch (_) {
      return "error";
    }
    if (response.ok) {
      try {
        keep(await response.json());
        return "ok";
      } catch (_) {
        return "error";
      }
    }
    return response.status === 401 || response.status === 403 ? "out" : "error";
  }
  async function scheduledRenew() {
    const result = await renew();
    if (result === "out") signedOut(ENDED);
    else if (result === "error" && access) timer = setTimeout(scheduledRenew, 30000);
  }

  // What requests carry: the access token when signed in, else the key box's value.
  function authorization() {
    if (access) return "Bearer " + access;
    const key = $("key") ? $("key").value.trim() : "";
    return key ? "Bearer " + key : null;
  }
  function withAuthorization(headers) {
    const h = { ...(headers || {}) };
    const value = authorization();
    if (value) h["Authorization"] = value;
    return h;
  }
  // fetch for the API: with the caller's Authorization, and on a 401 while
  // signed in, one refresh of the access token and one retry.
  async function request(url, init = {}) {
    const sent = access;
    const response = await fetch(url, { ...init, headers: withAuthorization(init.headers) });
    if (response.status !== 401 || !sent) return response;
    if (access === sent) {
      const result = await renew();
      if (result === "out") signedOut(ENDED);
      if (result !== "ok") return response;
    }
    if (!access) return response;
    return fetch(url, { ...init, headers: withAuthorization(init.headers) });
  }

  async function loadMe() {
    try {
      const response = await request("/auth/me", { headers: { "Accept": "application/json" } });
      me = response.ok ? await response.json() : null;
    } catch (_) {
      me = null;
    }
  }
  function render() {
    $("auth").hidden = !config.accounts;
    if (!config.accounts) return;
    const signedIn = access !== null;
    $("auth-form").hidden = signedIn;
    $("signed-in").hidden = !signedIn;
    $("key-instead").hidden = signedIn;
    $("sign-up").hidden = !canSignUp();
    $("display-name-label").hidden = !canSignUp();
    $("whoami").textContent = !signedIn ? "" : me && me.username ? "Signed in as " + me.username : "Signed in";
  }
  function signedOut(message) {
    const was = access !== null;
    access = null;
    me = null;
    clearTimeout(timer);
    render();
    status(message || "");
    if (was) onChange(false);
  }

  async function signIn(username, password) {
    const form = new URLSearchParams({ grant_type: "password", username, password });
    const response = await post("/auth/token?cookie=true", {
      headers: { "Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json" },
      body: form.toString(),
    });
    if (!response.ok) throw new Error(await explain(response, false));
    keep(await response.json());
    await loadMe();
    if (!access) throw new Error(ENDED);
    if (!me) me = { username: username.toLowerCase() };
  }
  async function signUp(username, password, displayName) {
    const body = { username, password };
    if (displayName) body.display_name = displayName;
    const response = await post("/auth/register", { headers: JSON_HEADERS, body: JSON.stringify(body) });
    if (!response.ok) throw new Error(await explain(response, true));
    let account = {};
    try { account = await response.json(); } catch (_) { /* no body */ }
    const first = config.first_account;
    config.first_account = false;
    // Waiting for an admin: the account says so, else the server's mode does
    // (the first account never waits: it becomes the admin).
    return typeof account.pending === "boolean" ? account.pending : config.signup === "approval" && !first;
  }
  function signedIn() {
    $("password").value = "";
    $("display-name").value = "";
    render();
    status("");
    onChange(true);
  }
  async function signOut() {
    let confirmed = false;
    try {
      const response = await fetch("/auth/logout", { method: "POST", credentials: "same-origin", headers: JSON_HEADERS, body: "{}" });
      confirmed = response.ok || response.status === 401;
    } catch (_) { /* signed out here all the same */ }
    signedOut("");
    if (!confirmed) $("error").textContent = "The server did not confirm the sign-out; this page has forgotten you, but sign out again to end the session.";
    $("username").focus();
  }

  // Runs one of the panel's actions: buttons off meanwhile, its error in the error box.
  async function run(action) {
    const buttons = ["sign-in", "sign-up", "sign-out"].map($);
    const focused = document.activeElement;
    $("error").textContent = "";
    status("");
    for (const b of buttons) b.disabled = true;
    try {
      await action();
    } catch (err) {
      $("error").textContent = err.message;
    } finally {
      for (const b of buttons) b.disabled = false;
      // A button loses the focus while it is disabled: give it back.
      const lost = !document.activeElement || document.activeElement === document.body;
      if (lost && focused && focused.isConnected && !focused.closest("[hidden]")) focused.focus();
    }
  }
  function wire() {
    $("auth-form").addEventListener("submit", (event) => {
      event.preventDefault();
      run(async () => {
        await signIn($("username").value.trim(), $("password").value);
        signedIn();
      });
    });
    $("sign-up").addEventListener("click", () => {
      if (!$("auth-form").reportValidity()) return;
      run(async () => {
        const username = $("username").value.trim(), password = $("password").value;
        const pending = await signUp(username, password, $("display-name").value.trim());
        if (pending) {
          $("password").value = "";
          render();
          status("Your account awaits an admin's approval.");
          return;
        }
        await signIn(username, password);
        signedIn();
      });
    });
    $("sign-out").addEventListener("click", () => run(signOut));
  }

  // Asks the server whether it has accounts and, if so, whether the
  // refresh cookie still signs this browser in. Resolves (never rejects)
  // once the page knows how to call the API.
  async function start(options = {}) {
    if (options.onChange) onChange = options.onChange;
    wire();
    try {
      const response = await fetch("/auth/config", { headers: { "Accept": "application/json" } });
      if (response.ok) {
        const body = await response.json();
        if (body && body.accounts === true) {
          config = { accounts: true, signup: String(body.signup || "closed"), first_account: body.first_account === true };
        }
      }
    } catch (_) { /* no accounts here: the key box only */ }
    if (!config.accounts) {
      render();
      return false;
    }
    const keyLabel = $("key") && $("key").closest("label");
    if (keyLabel) $("key-instead").append(keyLabel);
    if ((await renew()) === "ok") await loadMe();
    render();
    if (!access && config.first_account) status("No account exists yet: the first one created becomes the admin.");
    return access !== null;
  }

  return {
    start,
    request,
    authorization,
    get accounts() { return config.accounts; },
    get signedIn() { return access !== null; },
    get user() { return me; },
  };
})();
