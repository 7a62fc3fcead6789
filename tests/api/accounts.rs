//! Accounts of the server's own (`--accounts`): sign-up, the OAuth2
//! password flow, refresh rotation and reuse detection, sign-out, password
//! changes, `--signup` modes, admins, personal keys, enumeration, the
//! sign-in limit (failing closed), and every store, including two
//! instances on one PostgreSQL and a restart on SQLite.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use chatbot_api::AppState;
use chatbot_api::domain::accounts::db::AccountDb;
use chatbot_api::domain::accounts::{Accounts, STATE_TTL, Settings, Signup};
use chatbot_api::domain::chatbot::Chatbot;
use chatbot_api::domain::redis::Redis;
use chatbot_api::domain::store::{Store, StoreKind};
use chatbot_api::http::auth::{Jwt, JwtSettings, KeySource};
use chatbot_api::http::validate::Limits;
use serde_json::{Value, json};

use crate::helpers::{TestApp, TestResponse, postgres_schema, redis_prefix, redis_url};

/// A store, where its accounts live, and what must outlive them.
struct Site {
    store: Arc<dyn Store>,
    kind: StoreKind,
    _guard: Box<dyn std::any::Any + Send>,
}

async fn memory_site() -> Site {
    let kind = StoreKind::Memory;
    Site {
        store: kind.open(1).await.unwrap(),
        kind,
        _guard: Box::new(()),
    }
}

async fn sqlite_site() -> Site {
    let dir = tempfile::tempdir().unwrap();
    let kind = StoreKind::Sqlite(dir.path().join("chat.db").display().to_string());
    Site {
        store: kind.open(2).await.unwrap(),
        kind,
        _guard: Box::new(dir),
    }
}

async fn postgres_site() -> Option<Site> {
    let schema = postgres_schema().await?;
    let kind = StoreKind::Postgres(schema.url.clone());
    Some(Site {
        store: kind.open(2).await.unwrap(),
        kind,
        _guard: Box::new(schema),
    })
}

/// Every store this machine can test.
async fn sites() -> Vec<(&'static str, Site)> {
    let mut sites = vec![
        ("memory", memory_site().await),
        ("sqlite", sqlite_site().await),
    ];
    if let Some(site) = postgres_site().await {
        sites.push(("postgres", site));
    }
    sites
}

fn settings(signup: Signup) -> Settings {
    Settings {
        signup,
        hash_concurrency: 2,
        // Reuse is detected at once (the grace has a test of its own).
        reuse_grace: Duration::ZERO,
        ..Settings::default()
    }
}

async fn accounts(site: &Site, settings: Settings) -> Arc<Accounts> {
    let db = AccountDb::open(&site.kind).await.unwrap();
    Arc::new(Accounts::new(db, settings).await.unwrap())
}

fn app_with(
    site: &Site,
    accounts: Arc<Accounts>,
    tweak: impl FnOnce(AppState) -> AppState,
) -> TestApp {
    let state = AppState::new(site.store.clone(), Chatbot::seed(), Limits::default())
        .with_accounts(accounts)
        .with_signin_limits(10_000, 10_000);
    TestApp::from_state(tweak(state))
}

async fn app(site: &Site, signup: Signup) -> TestApp {
    app_with(site, accounts(site, settings(signup)).await, |s| s)
}

async fn form(app: &TestApp, uri: &str, body: &str) -> TestResponse {
    app.request(
        Method::POST,
        uri,
        Some("application/x-www-form-urlencoded"),
        body.to_owned(),
    )
    .await
}

async fn post(app: &TestApp, uri: &str, bearer: Option<&str>, body: Value) -> TestResponse {
    let auth = bearer.map(|t| format!("Bearer {t}"));
    app.call(
        Method::POST,
        uri,
        auth.as_deref().map(|a| ("authorization", a)),
        Some(body),
    )
    .await
}

async fn get(app: &TestApp, uri: &str, bearer: &str) -> TestResponse {
    app.call(
        Method::GET,
        uri,
        Some(("authorization", &format!("Bearer {bearer}"))),
        None,
    )
    .await
}

async fn register(app: &TestApp, username: &str, password: &str) -> TestResponse {
    post(
        app,
        "/auth/register",
        None,
        json!({"username": username, "password": password}),
    )
    .await
}

async fn sign_in(app: &TestApp, username: &str, password: &str) -> TestResponse {
    form(
        app,
        "/auth/token",
        &format!("username={username}&password={password}"),
    )
    .await
}

/// Signs in and returns (access token, refresh token).
async fn tokens(app: &TestApp, username: &str, password: &str) -> (String, String) {
    let response = sign_in(app, username, password).await;
    assert_eq!(response.status, StatusCode::OK, "{}", response.text());
    let body = response.json();
    (
        body["access_token"].as_str().unwrap().to_owned(),
        body["refresh_token"].as_str().unwrap().to_owned(),
    )
}

async fn refresh(app: &TestApp, token: &str) -> TestResponse {
    post(app, "/auth/refresh", None, json!({"refresh_token": token})).await
}

async fn chat(app: &TestApp, bearer: &str, session: &str, message: &str) -> TestResponse {
    post(
        app,
        "/chat",
        Some(bearer),
        json!({"user_message": message, "session_id": session}),
    )
    .await
}

#[tokio::test]
async fn sign_up_sign_in_and_own_conversations_on_every_store() {
    for (name, site) in sites().await {
        let app = app(&site, Signup::Open).await;
        let config = app.get("/auth/config").await.json();
        assert_eq!(
            config,
            json!({"accounts": true, "signup": "open", "first_account": true}),
            "{name}"
        );

        let alice = register(&app, "Alice", "correct horse battery").await;
        assert_eq!(
            alice.status,
            StatusCode::CREATED,
            "{name}: {}",
            alice.text()
        );
        let alice = alice.json();
        assert_eq!(
            alice["username"], "alice",
            "{name}: usernames are kept lower-cased"
        );
        assert_eq!(
            alice["admin"], true,
            "{name}: the first account is an admin"
        );
        assert_eq!(alice["owner"], "account:alice");
        let bob = register(&app, "bob", "another good one").await.json();
        assert_eq!(bob["admin"], false, "{name}");
        assert_eq!(app.get("/auth/config").await.json()["first_account"], false);

        // Conversation routes need a token now.
        assert_eq!(
            app.post_chat(r#"{"user_message":"hi"}"#).await.status,
            StatusCode::UNAUTHORIZED
        );
        let (a, _) = tokens(&app, "ALICE", "correct horse battery").await;
        let (b, _) = tokens(&app, "bob", "another good one").await;
        let sent = chat(&app, &a, "s1", "Hello!").await;
        assert_eq!(sent.status, StatusCode::OK, "{name}: {}", sent.text());
        assert_eq!(
            get(&app, "/chat/history/s1", &a).await.status,
            StatusCode::OK
        );
        // Bob's s1 is another conversation: he sees none of Alice's.
        assert_eq!(
            get(&app, "/chat/history/s1", &b).await.status,
            StatusCode::NOT_FOUND,
            "{name}"
        );
        assert_eq!(
            get(&app, "/chat/sessions", &b).await.json(),
            json!([]),
            "{name}"
        );
        assert_eq!(get(&app, "/v1/models", &b).await.status, StatusCode::OK);

        let me = get(&app, "/auth/me", &b).await;
        assert_eq!(me.status, StatusCode::OK);
        let me = me.json();
        assert_eq!(me["username"], "bob");
        assert_eq!(me["display_name"], "bob");
        assert!(me["created_at"].as_str().unwrap().ends_with('Z'));
        // An admin reads Bob's conversations with ?owner=account:bob.
        chat(&app, &b, "bobs", "Hello!").await;
        let read = get(&app, "/chat/history/bobs?owner=account:bob", &a).await;
        assert_eq!(read.status, StatusCode::OK, "{name}: {}", read.text());
        assert_eq!(
            get(&app, "/chat/history/s1?owner=account:alice", &b)
                .await
                .status,
            StatusCode::FORBIDDEN
        );
    }
}

#[tokio::test]
async fn the_token_route_speaks_oauth2_password_flow_and_refuses_alike() {
    let site = memory_site().await;
    let app = app(&site, Signup::Open).await;
    register(&app, "carol", "carol's password").await;

    let good = sign_in(&app, "carol", "carol%27s%20password").await;
    assert_eq!(good.status, StatusCode::OK, "{}", good.text());
    assert_eq!(good.header("cache-control"), Some("no-store"));
    let body = good.json();
    let fields: Vec<&str> = body
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        fields,
        ["access_token", "token_type", "expires_in", "refresh_token"]
    );
    assert_eq!(body["token_type"], "bearer");
    assert_eq!(body["expires_in"], 900);
    // grant_type=password (as Swagger UI sends it) is fine; another grant is not.
    let swagger = form(
        &app,
        "/auth/token",
        "grant_type=password&username=carol&password=carol%27s%20password&scope=&client_id=",
    )
    .await;
    assert_eq!(swagger.status, StatusCode::OK);
    let other = form(
        &app,
        "/auth/token",
        "grant_type=client_credentials&username=carol&password=x",
    )
    .await;
    assert_eq!(other.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(other.json()["detail"][0]["type"], "string_pattern_mismatch");

    // Missing fields, as FastAPI's form parsing reports them.
    let missing = form(&app, "/auth/token", "username=carol").await;
    assert_eq!(missing.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        missing.json(),
        json!({"detail": [{"type": "missing", "loc": ["body", "password"], "msg": "Field required", "input": null}]})
    );
    // JSON is not a form: both fields missing.
    let json_body = post(
        &app,
        "/auth/token",
        None,
        json!({"username": "carol", "password": "x"}),
    )
    .await;
    assert_eq!(json_body.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(json_body.json()["detail"].as_array().unwrap().len(), 2);

    // An unknown user and a wrong password: the same status, body and header.
    let wrong = sign_in(&app, "carol", "not-her-password").await;
    let unknown = sign_in(&app, "nobody", "not-her-password").await;
    for refused in [&wrong, &unknown] {
        assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
        assert_eq!(
            refused.text(),
            r#"{"detail":"Incorrect username or password"}"#
        );
        assert_eq!(refused.header("www-authenticate"), Some("Bearer"));
    }
    // The password never comes back in an error.
    let long = "p".repeat(129);
    let refused = register(&app, "dave", &long).await;
    assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(!refused.text().contains(&long));
    assert_eq!(refused.json()["detail"][0]["type"], "string_too_long");
}

#[tokio::test]
async fn refresh_tokens_rotate_and_a_reused_one_revokes_its_family() {
    for (name, site) in sites().await {
        let app = app(&site, Signup::Open).await;
        register(&app, "erin", "erin's password").await;
        let (_, first) = tokens(&app, "erin", "erin%27s%20password").await;
        let (_, other_device) = tokens(&app, "erin", "erin%27s%20password").await;

        let rotated = refresh(&app, &first).await;
        assert_eq!(rotated.status, StatusCode::OK, "{name}: {}", rotated.text());
        let second = rotated.json()["refresh_token"].as_str().unwrap().to_owned();
        assert_ne!(second, first);
        let access = rotated.json()["access_token"].as_str().unwrap().to_owned();
        assert_eq!(get(&app, "/auth/me", &access).await.status, StatusCode::OK);

        // The spent token again: refused, and its family with it.
        let reused = refresh(&app, &first).await;
        assert_eq!(reused.status, StatusCode::UNAUTHORIZED, "{name}");
        assert_eq!(
            reused.header("www-authenticate"),
            Some(r#"Bearer error="invalid_token""#)
        );
        assert_eq!(
            refresh(&app, &second).await.status,
            StatusCode::UNAUTHORIZED,
            "{name}: family revoked"
        );
        // Another sign-in's family is untouched.
        assert_eq!(
            refresh(&app, &other_device).await.status,
            StatusCode::OK,
            "{name}"
        );
        // Garbage is refused as plainly.
        assert_eq!(
            refresh(&app, "cbr_nonsense").await.status,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(refresh(&app, "").await.status, StatusCode::UNAUTHORIZED);
    }
}

#[tokio::test]
async fn two_uses_of_one_refresh_token_at_once_give_one_pair_at_most() {
    for (name, site) in sites().await {
        let app = app(&site, Signup::Open).await;
        register(&app, "race", "race password").await;
        let (_, token) = tokens(&app, "race", "race%20password").await;
        let (a, b) = tokio::join!(refresh(&app, &token), refresh(&app, &token));
        let won = [&a, &b]
            .iter()
            .filter(|r| r.status == StatusCode::OK)
            .count();
        assert!(won <= 1, "{name}: both uses won");
    }
}

#[tokio::test]
async fn two_tabs_refreshing_at_once_stay_signed_in_within_the_grace() {
    let site = sqlite_site().await;
    let grace = Settings {
        reuse_grace: Duration::from_secs(30),
        ..settings(Signup::Open)
    };
    let app = app_with(&site, accounts(&site, grace).await, |s| s);
    register(&app, "tabs", "tabs password").await;
    let (_, token) = tokens(&app, "tabs", "tabs%20password").await;
    let first = refresh(&app, &token).await;
    let second = refresh(&app, &token).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(
        second.status,
        StatusCode::OK,
        "the same token again, within the grace"
    );
    // Once more only: a third use is reuse, and revokes the family.
    assert_eq!(refresh(&app, &token).await.status, StatusCode::UNAUTHORIZED);
    for tab in [first, second] {
        let next = tab.json()["refresh_token"].as_str().unwrap().to_owned();
        assert_eq!(
            refresh(&app, &next).await.status,
            StatusCode::UNAUTHORIZED,
            "family revoked"
        );
    }
}

#[tokio::test]
async fn logout_ends_one_device_and_logout_all_ends_every_one() {
    for (name, site) in sites().await {
        let app = app(&site, Signup::Open).await;
        register(&app, "frank", "frank's password").await;
        let (_, phone) = tokens(&app, "frank", "frank%27s%20password").await;
        let (laptop_access, laptop) = tokens(&app, "frank", "frank%27s%20password").await;

        let out = post(&app, "/auth/logout", None, json!({"refresh_token": phone})).await;
        assert_eq!(out.status, StatusCode::NO_CONTENT);
        assert_eq!(
            refresh(&app, &phone).await.status,
            StatusCode::UNAUTHORIZED,
            "{name}"
        );
        let laptop = refresh(&app, &laptop).await;
        assert_eq!(laptop.status, StatusCode::OK, "{name}");
        let laptop = laptop.json()["refresh_token"].as_str().unwrap().to_owned();

        assert_eq!(
            chat(&app, &laptop_access, "s", "Hello!").await.status,
            StatusCode::OK
        );
        let all = post(&app, "/auth/logout/all", Some(&laptop_access), json!({})).await;
        assert_eq!(all.status, StatusCode::NO_CONTENT, "{name}: {}", all.text());
        assert_eq!(
            refresh(&app, &laptop).await.status,
            StatusCode::UNAUTHORIZED,
            "{name}"
        );
        // The access token in hand is refused at once on this instance.
        let after = chat(&app, &laptop_access, "s", "Hello!").await;
        assert_eq!(after.status, StatusCode::UNAUTHORIZED, "{name}");
        // Signing in again works.
        tokens(&app, "frank", "frank%27s%20password").await;
    }
}

#[tokio::test]
async fn a_password_change_ends_every_other_session() {
    let site = sqlite_site().await;
    let app = app(&site, Signup::Open).await;
    register(&app, "grace", "first password").await;
    let (old_access, old_refresh) = tokens(&app, "grace", "first%20password").await;

    let wrong = post(
        &app,
        "/auth/password",
        Some(&old_access),
        json!({"current_password": "not it", "new_password": "second password"}),
    )
    .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    let weak = post(
        &app,
        "/auth/password",
        Some(&old_access),
        json!({"current_password": "first password", "new_password": "tiny1"}),
    )
    .await;
    assert_eq!(weak.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        weak.json()["detail"][0]["loc"],
        json!(["body", "new_password"])
    );
    assert_eq!(weak.json()["detail"][0]["ctx"], json!({"min_length": 8}));
    assert!(!weak.text().contains("tiny1"), "{}", weak.text());

    let changed = post(
        &app,
        "/auth/password",
        Some(&old_access),
        json!({"current_password": "first password", "new_password": "second password"}),
    )
    .await;
    assert_eq!(changed.status, StatusCode::OK, "{}", changed.text());
    let new_access = changed.json()["access_token"].as_str().unwrap().to_owned();
    assert_eq!(
        refresh(&app, &old_refresh).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        get(&app, "/auth/me", &old_access).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        get(&app, "/auth/me", &new_access).await.status,
        StatusCode::OK
    );
    assert_eq!(
        sign_in(&app, "grace", "first%20password").await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        sign_in(&app, "grace", "second%20password").await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn signup_modes_decide_who_may_register() {
    for (name, site) in sites().await {
        // closed: the first account only, then admins make accounts.
        let closed = app(&site, Signup::Closed).await;
        let root = register(&closed, "root", "root password").await;
        assert_eq!(root.status, StatusCode::CREATED, "{name}");
        assert_eq!(root.json()["admin"], true);
        let refused = register(&closed, "mallory", "mallory password").await;
        assert_eq!(refused.status, StatusCode::FORBIDDEN, "{name}");
        assert_eq!(
            refused.text(),
            r#"{"detail":"Sign-up is closed: an admin creates accounts"}"#
        );
        let (admin, _) = tokens(&closed, "root", "root%20password").await;
        let made = post(
            &closed,
            "/admin/users",
            Some(&admin),
            json!({"username": "henry", "password": "henry password"}),
        )
        .await;
        assert_eq!(made.status, StatusCode::CREATED, "{name}: {}", made.text());
        assert_eq!(made.json()["admin"], false);
        tokens(&closed, "henry", "henry%20password").await;
        let taken = post(
            &closed,
            "/admin/users",
            Some(&admin),
            json!({"username": "HENRY", "password": "henry password"}),
        )
        .await;
        assert_eq!(taken.status, StatusCode::CONFLICT);
        assert_eq!(taken.text(), r#"{"detail":"Username already taken"}"#);
    }
    // approval: anyone signs up, and waits for an admin.
    let site = memory_site().await;
    let approval = app(&site, Signup::Approval).await;
    assert_eq!(
        register(&approval, "root", "root password").await.json()["pending"],
        false
    );
    let ivy = register(&approval, "ivy", "ivy's password").await;
    assert_eq!(ivy.status, StatusCode::CREATED);
    assert_eq!(ivy.json()["pending"], true);
    let waiting = sign_in(&approval, "ivy", "ivy%27s%20password").await;
    assert_eq!(waiting.status, StatusCode::FORBIDDEN);
    assert_eq!(
        waiting.text(),
        r#"{"detail":"Account awaits an admin's approval"}"#
    );
    let (admin, _) = tokens(&approval, "root", "root%20password").await;
    let approved = approval
        .call(
            Method::PATCH,
            "/admin/users/ivy",
            Some(("authorization", &format!("Bearer {admin}"))),
            Some(json!({"approved": true})),
        )
        .await;
    assert_eq!(approved.status, StatusCode::OK, "{}", approved.text());
    tokens(&approval, "ivy", "ivy%27s%20password").await;
}

#[tokio::test]
async fn admins_manage_accounts_and_everyone_else_gets_403() {
    for (name, site) in sites().await {
        let app = app(&site, Signup::Open).await;
        register(&app, "root", "root password").await;
        register(&app, "judy", "judy's password").await;
        let (admin, _) = tokens(&app, "root", "root%20password").await;
        let (judy, judy_refresh) = tokens(&app, "judy", "judy%27s%20password").await;
        let as_judy = format!("Bearer {judy}");
        let as_admin = format!("Bearer {admin}");

        for (method, uri, body) in [
            (Method::GET, "/admin/users", None),
            (
                Method::POST,
                "/admin/users",
                Some(json!({"username": "x-user", "password": "password1"})),
            ),
            (
                Method::PATCH,
                "/admin/users/root",
                Some(json!({"disabled": true})),
            ),
            (Method::DELETE, "/admin/users/root", None),
        ] {
            let refused = app
                .call(method.clone(), uri, Some(("authorization", &as_judy)), body)
                .await;
            assert_eq!(
                refused.status,
                StatusCode::FORBIDDEN,
                "{name}: {method} {uri}"
            );
            assert_eq!(
                refused.text(),
                r#"{"detail":"Only an admin may manage accounts"}"#
            );
        }
        let list = app
            .call(
                Method::GET,
                "/admin/users",
                Some(("authorization", &as_admin)),
                None,
            )
            .await;
        let list = list.json();
        let names: Vec<&str> = list
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["username"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["judy", "root"], "{name}");

        // The last admin cannot be demoted, disabled or deleted.
        for (method, body) in [
            (Method::PATCH, Some(json!({"admin": false}))),
            (Method::PATCH, Some(json!({"disabled": true}))),
            (Method::DELETE, None),
        ] {
            let kept = app
                .call(
                    method,
                    "/admin/users/root",
                    Some(("authorization", &as_admin)),
                    body,
                )
                .await;
            assert_eq!(kept.status, StatusCode::CONFLICT, "{name}: {}", kept.text());
        }
        let empty = app
            .call(
                Method::PATCH,
                "/admin/users/judy",
                Some(("authorization", &as_admin)),
                Some(json!({})),
            )
            .await;
        assert_eq!(empty.status, StatusCode::UNPROCESSABLE_ENTITY);
        let unknown = app
            .call(
                Method::PATCH,
                "/admin/users/nobody",
                Some(("authorization", &as_admin)),
                Some(json!({"disabled": true})),
            )
            .await;
        assert_eq!(unknown.status, StatusCode::NOT_FOUND);

        // Disabled: her tokens, refresh tokens and sign-ins are refused.
        assert_eq!(
            chat(&app, &judy, "mine", "Hello!").await.status,
            StatusCode::OK
        );
        let disabled = app
            .call(
                Method::PATCH,
                "/admin/users/judy",
                Some(("authorization", &as_admin)),
                Some(json!({"disabled": true})),
            )
            .await;
        assert_eq!(disabled.json()["disabled"], true, "{name}");
        let refused = chat(&app, &judy, "mine", "Hello!").await;
        assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "{name}");
        assert_eq!(
            refused.header("www-authenticate"),
            Some(r#"Bearer error="invalid_token""#)
        );
        assert_eq!(
            refresh(&app, &judy_refresh).await.status,
            StatusCode::UNAUTHORIZED
        );
        let signin = sign_in(&app, "judy", "judy%27s%20password").await;
        assert_eq!(signin.status, StatusCode::UNAUTHORIZED);
        assert_eq!(signin.text(), r#"{"detail":"Account disabled"}"#);
        // Enabled again: a new sign-in works (the old tokens stay dead).
        app.call(
            Method::PATCH,
            "/admin/users/judy",
            Some(("authorization", &as_admin)),
            Some(json!({"disabled": false})),
        )
        .await;
        assert_eq!(
            chat(&app, &judy, "mine", "Hello!").await.status,
            StatusCode::UNAUTHORIZED
        );
        tokens(&app, "judy", "judy%27s%20password").await;

        // Deleted: her conversations go with her; a new "judy" sees none.
        assert_eq!(
            get(&app, "/chat/history/mine?owner=account:judy", &admin)
                .await
                .status,
            StatusCode::OK
        );
        let deleted = app
            .call(
                Method::DELETE,
                "/admin/users/judy",
                Some(("authorization", &as_admin)),
                None,
            )
            .await;
        assert_eq!(
            deleted.status,
            StatusCode::NO_CONTENT,
            "{name}: {}",
            deleted.text()
        );
        assert_eq!(
            get(&app, "/chat/history/mine?owner=account:judy", &admin)
                .await
                .status,
            StatusCode::NOT_FOUND,
            "{name}"
        );
        register(&app, "judy", "new judy password").await;
        let (new_judy, _) = tokens(&app, "judy", "new%20judy%20password").await;
        assert_eq!(
            get(&app, "/chat/sessions", &new_judy).await.json(),
            json!([]),
            "{name}"
        );
    }
}

#[tokio::test]
async fn personal_keys_act_as_their_account_until_deleted() {
    for (name, site) in sites().await {
        let shared = accounts(&site, settings(Signup::Open)).await;
        let app = app_with(&site, shared.clone(), |s| s);
        register(&app, "kim", "kim's password").await;
        register(&app, "lee", "lee's password").await;
        let (kim, _) = tokens(&app, "kim", "kim%27s%20password").await;
        let (lee, _) = tokens(&app, "lee", "lee%27s%20password").await;

        let made = post(&app, "/auth/keys", Some(&kim), json!({"name": "my script"})).await;
        assert_eq!(made.status, StatusCode::CREATED, "{name}: {}", made.text());
        let made = made.json();
        let key = made["key"].as_str().unwrap().to_owned();
        assert!(key.starts_with("cbk_") && key.len() > 40);
        let id = made["id"].as_str().unwrap().to_owned();

        // The key acts as Kim: what it writes, her token reads.
        assert_eq!(
            chat(&app, &key, "via-key", "Hello!").await.status,
            StatusCode::OK,
            "{name}"
        );
        let by_header = app
            .call(
                Method::GET,
                "/chat/history/via-key",
                Some(("x-api-key", &key)),
                None,
            )
            .await;
        assert_eq!(by_header.status, StatusCode::OK);
        assert_eq!(
            get(&app, "/chat/history/via-key", &kim).await.status,
            StatusCode::OK
        );
        assert_eq!(
            get(&app, "/chat/history/via-key", &lee).await.status,
            StatusCode::NOT_FOUND
        );

        let listed = get(&app, "/auth/keys", &kim).await;
        let listed = listed.json();
        assert_eq!(listed.as_array().unwrap().len(), 1);
        assert_eq!(listed[0]["name"], "my script");
        assert!(listed[0].get("key").is_none(), "never shown again");
        assert!(!listed.to_string().contains(&key[8..]));
        assert!(listed[0]["last_used_at"].is_string(), "{name}: {listed}");
        assert_eq!(get(&app, "/auth/keys", &lee).await.json(), json!([]));

        // Lee cannot delete it; Kim can, and it stops at once.
        let uri = format!("/auth/keys/{id}");
        let as_lee = app
            .call(
                Method::DELETE,
                &uri,
                Some(("authorization", &format!("Bearer {lee}"))),
                None,
            )
            .await;
        assert_eq!(as_lee.status, StatusCode::NOT_FOUND);
        let gone = app
            .call(
                Method::DELETE,
                &uri,
                Some(("authorization", &format!("Bearer {kim}"))),
                None,
            )
            .await;
        assert_eq!(gone.status, StatusCode::NO_CONTENT);
        assert_eq!(
            chat(&app, &key, "via-key", "Hello!").await.status,
            StatusCode::UNAUTHORIZED,
            "{name}"
        );
        let unnamed = post(&app, "/auth/keys", Some(&kim), json!({})).await;
        assert_eq!(unnamed.status, StatusCode::UNPROCESSABLE_ENTITY);

        // A key may not make keys, change the password or end sessions.
        let key = post(&app, "/auth/keys", Some(&kim), json!({"name": "second"}))
            .await
            .json()["key"]
            .as_str()
            .unwrap()
            .to_owned();
        for (uri, body) in [
            ("/auth/keys", json!({"name": "more"})),
            ("/auth/logout/all", json!({})),
            (
                "/auth/password",
                json!({"current_password": "kim's password", "new_password": "taken over!"}),
            ),
        ] {
            let refused = post(&app, uri, Some(&key), body).await;
            assert_eq!(refused.status, StatusCode::FORBIDDEN, "{name}: {uri}");
        }
        assert_eq!(get(&app, "/auth/me", &key).await.status, StatusCode::OK);
        // A disabled account's keys are refused.
        register(&app, "root2", "root2 password").await;
        let admins = app_with(&site, shared.clone(), |s| {
            s.with_admin_keys(chatbot_api::http::auth::ApiKeys::new(["admin-key"]))
        });
        // Kim was first (an admin): another admin first, so she is not the last.
        let promoted = admins
            .call(
                Method::PATCH,
                "/admin/users/root2",
                Some(("x-api-key", "admin-key")),
                Some(json!({"admin": true})),
            )
            .await;
        assert_eq!(promoted.status, StatusCode::OK);
        let disabled = admins
            .call(
                Method::PATCH,
                "/admin/users/kim",
                Some(("x-api-key", "admin-key")),
                Some(json!({"disabled": true})),
            )
            .await;
        assert_eq!(
            disabled.status,
            StatusCode::OK,
            "{name}: {}",
            disabled.text()
        );
        tokio::time::sleep(STATE_TTL + Duration::from_millis(100)).await;
        assert_eq!(
            chat(&app, &key, "via-key", "Hello!").await.status,
            StatusCode::UNAUTHORIZED,
            "{name}"
        );
    }
}

#[tokio::test]
async fn bad_input_gets_the_rule_and_changes_nothing() {
    let site = memory_site().await;
    let app = app(&site, Signup::Open).await;
    assert_eq!(
        register(&app, "mia", "mia's password").await.status,
        StatusCode::CREATED
    );
    let taken = register(&app, "Mia", "another password").await;
    assert_eq!(taken.status, StatusCode::CONFLICT);
    // The taken name kept its password.
    tokens(&app, "mia", "mia%27s%20password").await;
    for (body, kind, field) in [
        (
            json!({"username": "mi", "password": "long enough"}),
            "string_too_short",
            "username",
        ),
        (
            json!({"username": "a b c", "password": "long enough"}),
            "string_pattern_mismatch",
            "username",
        ),
        (
            json!({"username": "x".repeat(33), "password": "long enough"}),
            "string_too_long",
            "username",
        ),
        (
            json!({"username": "nina", "password": "short"}),
            "string_too_short",
            "password",
        ),
        (json!({"username": "nina"}), "missing", "password"),
        (
            json!({"username": "nina", "password": 12345678}),
            "string_type",
            "password",
        ),
    ] {
        let refused = post(&app, "/auth/register", None, body.clone()).await;
        assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        let issue = &refused.json()["detail"][0];
        assert_eq!(issue["type"], kind, "{body}");
        assert_eq!(issue["loc"], json!(["body", field]), "{body}");
    }
    let garbled = app
        .request(
            Method::POST,
            "/auth/register",
            Some("application/json"),
            "{nope",
        )
        .await;
    assert_eq!(garbled.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(garbled.json()["detail"][0]["type"], "json_invalid");
    assert_eq!(
        sign_in(&app, "nina", "long%20enough").await.status,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn tokens_of_another_key_or_issuer_are_other_owners_or_refused() {
    const SECRET: &str = "an identity provider's secret, 32 bytes or more";
    let site = memory_site().await;
    // An identity provider's tokens beside accounts (its own secret).
    let jwt = Jwt::new(&JwtSettings::new(KeySource::Secret(
        SECRET.as_bytes().to_vec(),
    )))
    .unwrap();
    let app = app_with(&site, accounts(&site, settings(Signup::Open)).await, |s| {
        s.with_jwt(jwt)
    });
    register(&app, "olga", "olga's password").await;
    let (olga, _) = tokens(&app, "olga", "olga%27s%20password").await;
    chat(&app, &olga, "secret", "Hello!").await;

    // The provider's "olga" is someone else.
    let claims = json!({"sub": "olga", "exp": chrono::Utc::now().timestamp() + 300});
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()).unwrap();
    let idp = jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap();
    assert_eq!(
        get(&app, "/chat/history/secret", &idp).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        get(&app, "/auth/me", &idp).await.status,
        StatusCode::FORBIDDEN
    );
    // Our claims signed with another key: refused.
    let forged_claims = json!({"sub": "olga", "iss": "chatbot-api", "aud": "chatbot-api", "ep": 0,
        "iat": chrono::Utc::now().timestamp(), "exp": chrono::Utc::now().timestamp() + 300});
    let other =
        jsonwebtoken::EncodingKey::from_secret(b"some other key that is long enough!").unwrap();
    let forged =
        jsonwebtoken::encode(&jsonwebtoken::Header::default(), &forged_claims, &other).unwrap();
    let refused = get(&app, "/chat/history/secret", &forged).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        refused.header("www-authenticate"),
        Some(r#"Bearer error="invalid_token""#)
    );
}

#[tokio::test]
async fn the_signing_key_and_tokens_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let kind = StoreKind::Sqlite(dir.path().join("chat.db").display().to_string());
    let (access, refresh_token) = {
        let site = Site {
            store: kind.open(2).await.unwrap(),
            kind: kind.clone(),
            _guard: Box::new(()),
        };
        let accounts = accounts(&site, settings(Signup::Open)).await;
        let app = app_with(&site, accounts.clone(), |s| s);
        register(&app, "pat", "pat's password").await;
        let signed = tokens(&app, "pat", "pat%27s%20password").await;
        assert_eq!(
            chat(&app, &signed.0, "kept", "Hello!").await.status,
            StatusCode::OK
        );
        accounts.close().await;
        site.store.close().await;
        signed
    };
    let site = Site {
        store: kind.open(2).await.unwrap(),
        kind,
        _guard: Box::new(dir),
    };
    let app = app(&site, Signup::Open).await;
    assert_eq!(
        get(&app, "/chat/history/kept", &access).await.status,
        StatusCode::OK
    );
    assert_eq!(refresh(&app, &refresh_token).await.status, StatusCode::OK);
}

#[tokio::test]
async fn two_instances_on_one_postgres_share_accounts_and_revocations() {
    let Some(site) = postgres_site().await else {
        return;
    };
    let a = app(&site, Signup::Open).await;
    let b_site = Site {
        store: site.kind.open(2).await.unwrap(),
        kind: site.kind.clone(),
        _guard: Box::new(()),
    };
    let b = app(&b_site, Signup::Open).await;
    register(&a, "quinn", "quinn's password").await;
    assert_eq!(
        register(&b, "quinn", "quinn's password").await.status,
        StatusCode::CONFLICT
    );
    assert_eq!(b.get("/auth/config").await.json()["first_account"], false);
    let (access, refresh_token) = tokens(&b, "quinn", "quinn%27s%20password").await;
    assert_eq!(
        chat(&a, &access, "shared", "Hello!").await.status,
        StatusCode::OK,
        "A takes B's token"
    );
    assert_eq!(
        get(&b, "/chat/history/shared", &access).await.status,
        StatusCode::OK
    );
    let rotated = refresh(&a, &refresh_token).await;
    assert_eq!(rotated.status, StatusCode::OK);
    assert_eq!(
        refresh(&b, &refresh_token).await.status,
        StatusCode::UNAUTHORIZED,
        "reuse seen by B"
    );
    let (access, refresh_token) = tokens(&b, "quinn", "quinn%27s%20password").await;
    assert_eq!(get(&a, "/auth/me", &access).await.status, StatusCode::OK);
    assert_eq!(
        post(&b, "/auth/logout/all", Some(&access), json!({}))
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        refresh(&a, &refresh_token).await.status,
        StatusCode::UNAUTHORIZED,
        "at once"
    );
    tokio::time::sleep(STATE_TTL + Duration::from_millis(200)).await;
    assert_eq!(
        get(&a, "/auth/me", &access).await.status,
        StatusCode::UNAUTHORIZED,
        "within STATE_TTL"
    );
}

#[tokio::test]
async fn sign_ins_are_limited_per_account_and_per_address() {
    let site = memory_site().await;
    let accounts = accounts(&site, settings(Signup::Open)).await;
    let app = app_with(&site, accounts, |s| s.with_signin_limits(6, 3));
    register(&app, "rita", "rita's password").await;
    for _ in 0..3 {
        assert_eq!(
            sign_in(&app, "rita", "wrong%20password").await.status,
            StatusCode::UNAUTHORIZED
        );
    }
    let limited = sign_in(&app, "rita", "rita%27s%20password").await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(
        limited
            .header("retry-after")
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    // Another account from the same address still has tries, until the address has none.
    assert_eq!(
        sign_in(&app, "sam", "x").await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        sign_in(&app, "tom", "x").await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test]
async fn the_shared_sign_in_limit_fails_closed() {
    let site = memory_site().await;
    let accounts = accounts(&site, settings(Signup::Open)).await;
    let open = app_with(&site, accounts.clone(), |s| s);
    register(&open, "una", "una's password").await;
    // Redis unreachable: sign-ins are refused, not let through.
    let gone = Redis::open("redis://127.0.0.1:1/", "gone:").unwrap();
    let c = app_with(&site, accounts, |s| s.with_redis(gone));
    let refused = sign_in(&c, "una", "una%27s%20password").await;
    assert_eq!(
        refused.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        refused.text()
    );
    assert_eq!(
        refused.text(),
        r#"{"detail":"Sign-in is unavailable: try again shortly"}"#
    );
    assert!(refused.header("retry-after").is_some());
}

#[tokio::test]
async fn the_sign_in_limit_is_the_fleets_with_redis() {
    let Some(url) = redis_url().await else { return };
    let site = memory_site().await;
    let accounts = accounts(&site, settings(Signup::Open)).await;
    // Two instances on one Redis: the account's attempts add up.
    let redis = Redis::connect(&url, &redis_prefix()).await.unwrap();
    let a = app_with(&site, accounts.clone(), |s| {
        s.with_signin_limits(100, 3).with_redis(redis.clone())
    });
    let b = app_with(&site, accounts, |s| {
        s.with_signin_limits(100, 3).with_redis(redis)
    });
    register(&a, "uma", "uma's password").await;
    assert_eq!(
        sign_in(&a, "uma", "uma%27s%20password").await.status,
        StatusCode::OK
    );
    assert_eq!(
        sign_in(&b, "uma", "uma%27s%20password").await.status,
        StatusCode::OK
    );
    assert_eq!(
        sign_in(&a, "uma", "uma%27s%20password").await.status,
        StatusCode::OK
    );
    assert_eq!(
        sign_in(&b, "uma", "uma%27s%20password").await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
}

/// Median time of `n` sign-ins.
async fn median_sign_in(app: &TestApp, username: &str, n: usize) -> Duration {
    let mut times = Vec::new();
    for _ in 0..n {
        let started = Instant::now();
        let response = sign_in(app, username, "wrong%20password").await;
        times.push(started.elapsed());
        assert_eq!(response.status, StatusCode::UNAUTHORIZED);
    }
    times.sort();
    times[n / 2]
}

#[tokio::test]
async fn an_unknown_user_costs_as_long_as_a_wrong_password() {
    let site = memory_site().await;
    let app = app(&site, Signup::Open).await;
    register(&app, "vera", "vera's password").await;
    let known = median_sign_in(&app, "vera", 7).await;
    let unknown = median_sign_in(&app, "nobody-at-all", 7).await;
    let ratio = known.as_secs_f64() / unknown.as_secs_f64();
    // Both verify one Argon2id hash (~20 ms); without the dummy hash an
    // unknown user would answer in microseconds, a ratio over 100.
    assert!(
        (1.0 / 3.0..3.0).contains(&ratio),
        "known {known:?}, unknown {unknown:?}"
    );
}

#[tokio::test]
async fn a_page_keeps_the_refresh_token_in_an_http_only_cookie() {
    let site = memory_site().await;
    let app = app(&site, Signup::Open).await;
    register(&app, "wes", "wes's password").await;
    let signed = form(
        &app,
        "/auth/token?cookie=true",
        "username=wes&password=wes%27s%20password",
    )
    .await;
    assert_eq!(signed.status, StatusCode::OK);
    assert!(
        signed.json().get("refresh_token").is_none(),
        "not readable by the page's script"
    );
    let cookie = signed.header("set-cookie").unwrap().to_owned();
    for part in [
        "chatbot_refresh=cbr_",
        "HttpOnly",
        "Secure",
        "SameSite=Strict",
        "Path=/auth",
    ] {
        assert!(cookie.contains(part), "{cookie}");
    }
    let pair = cookie.split(';').next().unwrap().to_owned();
    let with_cookie = |uri: &'static str, pair: String| {
        Request::builder()
            .method(Method::POST)
            .uri(uri)
            .header("cookie", pair)
            .header("content-type", "application/json")
            .body(Body::from("{}"))
            .unwrap()
    };
    let renewed = app.send(with_cookie("/auth/refresh", pair.clone())).await;
    assert_eq!(renewed.status, StatusCode::OK, "{}", renewed.text());
    let next = renewed
        .header("set-cookie")
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    assert_ne!(next, pair, "rotated");
    let out = app.send(with_cookie("/auth/logout", next.clone())).await;
    assert_eq!(out.status, StatusCode::NO_CONTENT);
    assert!(out.header("set-cookie").unwrap().contains("Max-Age=0"));
    assert_eq!(
        app.send(with_cookie("/auth/refresh", next)).await.status,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn without_accounts_the_routes_are_absent_and_the_server_open() {
    let app = TestApp::new();
    assert_eq!(
        app.get("/auth/config").await.json(),
        json!({"accounts": false, "signup": "closed", "first_account": false})
    );
    assert_eq!(
        register(&app, "xena", "xena's password").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(app.get("/admin/users").await.status, StatusCode::NOT_FOUND);
    assert_eq!(
        app.post_chat(r#"{"user_message":"Hello!"}"#).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn the_document_signs_in_by_password_and_states_each_routes_security() {
    let site = memory_site().await;
    let app = app(&site, Signup::Open).await;
    let doc = app.get("/openapi.json").await.json();
    let scheme = &doc["components"]["securitySchemes"]["OAuth2PasswordBearer"];
    assert_eq!(scheme["type"], "oauth2");
    assert_eq!(scheme["flows"]["password"]["tokenUrl"], "/auth/token");
    for (path, method) in [
        ("/auth/register", "post"),
        ("/auth/token", "post"),
        ("/auth/refresh", "post"),
        ("/auth/logout", "post"),
        ("/auth/config", "get"),
    ] {
        assert!(
            doc["paths"][path][method].get("security").is_none(),
            "{method} {path} is public"
        );
    }
    for (path, method) in [
        ("/auth/me", "get"),
        ("/auth/password", "post"),
        ("/auth/logout/all", "post"),
        ("/auth/keys", "get"),
        ("/auth/keys", "post"),
        ("/auth/keys/{key_id}", "delete"),
        ("/admin/users", "get"),
        ("/admin/users", "post"),
        ("/admin/users/{username}", "patch"),
        ("/admin/users/{username}", "delete"),
        ("/chat", "post"),
    ] {
        let security = doc["paths"][path][method]["security"].to_string();
        assert!(
            security.contains("OAuth2PasswordBearer"),
            "{method} {path}: {security}"
        );
    }
    let form = &doc["paths"]["/auth/token"]["post"]["requestBody"]["content"];
    assert!(
        form.get("application/x-www-form-urlencoded").is_some(),
        "{form}"
    );
}

#[tokio::test]
async fn every_page_sends_the_security_headers() {
    let site = memory_site().await;
    let app = app(&site, Signup::Open).await;
    for uri in ["/", "/dashboard", "/docs/"] {
        let page = app
            .send(
                Request::builder()
                    .uri(uri)
                    .header("accept", "text/html")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        assert_eq!(page.status, StatusCode::OK, "{uri}");
        let csp = page.header("content-security-policy").unwrap_or_default();
        for part in [
            "default-src 'self'",
            "script-src 'self'",
            "frame-ancestors 'none'",
            "object-src 'none'",
        ] {
            assert!(csp.contains(part), "{uri}: {csp}");
        }
        assert_eq!(
            page.header("x-content-type-options"),
            Some("nosniff"),
            "{uri}"
        );
        assert_eq!(page.header("x-frame-options"), Some("DENY"), "{uri}");
        assert_eq!(page.header("referrer-policy"), Some("no-referrer"), "{uri}");
    }
    // The pages carry no inline script or style the policy would have to allow.
    for uri in ["/", "/dashboard"] {
        let html = app
            .send(
                Request::builder()
                    .uri(uri)
                    .header("accept", "text/html")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await;
        let html = html.text();
        assert!(
            !html.contains("<script>") && !html.contains("<style") && !html.contains(" onclick="),
            "{uri}"
        );
    }
    let script = app.get("/ui/session.js").await;
    assert_eq!(
        script.header("content-type"),
        Some("text/javascript; charset=utf-8")
    );
    assert_eq!(script.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(
        app.get("/ui/nothing.js").await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn a_password_is_never_echoed_in_a_422() {
    let site = memory_site().await;
    let app = app(&site, Signup::Open).await;
    let secret = "my very secret password";
    for body in [
        json!({"password": secret}),
        json!({"username": "ok-name", "password": secret, "display_name": 5}),
        json!(secret),
    ] {
        let refused = post(&app, "/auth/register", None, body.clone()).await;
        assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert!(!refused.text().contains(secret), "{}", refused.text());
    }
    register(&app, "quiet", "quiet password").await;
    let (access, _) = tokens(&app, "quiet", "quiet%20password").await;
    let refused = post(
        &app,
        "/auth/password",
        Some(&access),
        json!({"current_password": secret}),
    )
    .await;
    assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(!refused.text().contains(secret), "{}", refused.text());
}

#[tokio::test]
async fn a_shared_jwt_secret_never_lets_one_side_mint_the_others_tokens() {
    const SECRET: &str = "one secret for the provider and the accounts, 32+ bytes";
    let site = memory_site().await;
    let shared = Settings {
        secret: Some(SECRET.as_bytes().to_vec()),
        ..settings(Signup::Open)
    };
    let jwt = Jwt::new(&JwtSettings::new(KeySource::Secret(
        SECRET.as_bytes().to_vec(),
    )))
    .unwrap();
    let app = app_with(&site, accounts(&site, shared).await, |s| s.with_jwt(jwt));
    register(&app, "pia", "pia's password").await;
    let (pia, _) = tokens(&app, "pia", "pia%27s%20password").await;
    assert_eq!(
        chat(&app, &pia, "hers", "Hello!").await.status,
        StatusCode::OK
    );
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()).unwrap();
    let now = chrono::Utc::now().timestamp();
    // Our claims signed with the raw secret: not ours (the key is derived), so
    // at most the provider's subject "pia", another owner.
    let minted = json!({"sub": "pia", "iss": "chatbot-api", "aud": "chatbot-api", "aid": "x", "ep": 0,
        "iat": now, "exp": now + 300});
    let minted = jsonwebtoken::encode(&jsonwebtoken::Header::default(), &minted, &key).unwrap();
    assert_eq!(
        get(&app, "/chat/history/hers", &minted).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        get(&app, "/auth/me", &minted).await.status,
        StatusCode::FORBIDDEN
    );
    // And our token is nothing to the provider's check: its signature is another key's.
    let provider_only = Jwt::new(&JwtSettings::new(KeySource::Secret(
        SECRET.as_bytes().to_vec(),
    )))
    .unwrap();
    let other = app_with(
        &memory_site().await,
        accounts(&site, settings(Signup::Open)).await,
        |s| s.with_jwt(provider_only),
    );
    assert_eq!(
        get(&other, "/chat/sessions", &pia).await.status,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn a_cookie_sign_in_from_another_site_is_refused() {
    let site = memory_site().await;
    let app = app(&site, Signup::Open).await;
    register(&app, "rae", "rae's password").await;
    let attempt = |site: &'static str| {
        Request::builder()
            .method(Method::POST)
            .uri("/auth/token?cookie=true")
            .header("content-type", "application/x-www-form-urlencoded")
            .header("sec-fetch-site", site)
            .body(Body::from("username=rae&password=rae%27s%20password"))
            .unwrap()
    };
    let forged = app.send(attempt("cross-site")).await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN);
    assert!(forged.header("set-cookie").is_none());
    assert_eq!(
        app.send(attempt("same-origin")).await.status,
        StatusCode::OK
    );
    let by_origin = app
        .send(
            Request::builder()
                .method(Method::POST)
                .uri("/auth/token?cookie=true")
                .header("content-type", "application/x-www-form-urlencoded")
                .header("origin", "https://evil.example")
                .header("host", "chat.example")
                .body(Body::from("username=rae&password=rae%27s%20password"))
                .unwrap(),
        )
        .await;
    assert_eq!(by_origin.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn two_admins_demoting_each_other_at_once_leave_one() {
    for (name, site) in sites().await {
        let app = app(&site, Signup::Open).await;
        register(&app, "ann", "ann's password").await;
        let (ann, _) = tokens(&app, "ann", "ann%27s%20password").await;
        let as_ann = format!("Bearer {ann}");
        post(
            &app,
            "/admin/users",
            Some(&ann),
            json!({"username": "ben", "password": "ben's password", "admin": true}),
        )
        .await;
        let (ben, _) = tokens(&app, "ben", "ben%27s%20password").await;
        let as_ben = format!("Bearer {ben}");
        let (a, b) = tokio::join!(
            app.call(
                Method::PATCH,
                "/admin/users/ben",
                Some(("authorization", &as_ann)),
                Some(json!({"admin": false}))
            ),
            app.call(
                Method::PATCH,
                "/admin/users/ann",
                Some(("authorization", &as_ben)),
                Some(json!({"admin": false}))
            ),
        );
        let statuses = [a.status, b.status];
        assert!(
            statuses.contains(&StatusCode::CONFLICT)
                || statuses.contains(&StatusCode::UNAUTHORIZED)
                || statuses.contains(&StatusCode::FORBIDDEN),
            "{name}: {statuses:?}"
        );
        let left = app
            .call(
                Method::GET,
                "/admin/users",
                Some(("authorization", &as_ann)),
                None,
            )
            .await;
        let left = if left.status == StatusCode::OK {
            left
        } else {
            app.call(
                Method::GET,
                "/admin/users",
                Some(("authorization", &as_ben)),
                None,
            )
            .await
        };
        let admins = left
            .json()
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["admin"] == true)
            .count();
        assert_eq!(admins, 1, "{name}: {statuses:?}");
    }
}

#[tokio::test]
async fn a_bootstrap_admin_is_made_once_before_anyone_signs_up() {
    let site = sqlite_site().await;
    let accounts = accounts(&site, settings(Signup::Closed)).await;
    assert!(
        accounts
            .bootstrap_admin("boss", "boss password".into())
            .await
            .unwrap()
    );
    // At the next start (or on another instance) it is there already.
    assert!(
        !accounts
            .bootstrap_admin("boss", "boss password".into())
            .await
            .unwrap()
    );
    assert!(
        !accounts
            .bootstrap_admin("other", "other password".into())
            .await
            .unwrap()
    );
    let app = app_with(&site, accounts, |s| s);
    assert_eq!(app.get("/auth/config").await.json()["first_account"], false);
    assert_eq!(
        register(&app, "stranger", "stranger password").await.status,
        StatusCode::FORBIDDEN
    );
    let (boss, _) = tokens(&app, "boss", "boss%20password").await;
    assert_eq!(get(&app, "/auth/me", &boss).await.json()["admin"], true);
}
