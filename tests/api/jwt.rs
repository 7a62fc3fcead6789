//! Bearer JWTs: tokens minted here (HS256, RS256, ES256), keys from a
//! secret, a PEM file or a JWKS served on loopback (with a rotation), every
//! refusal, per-user isolation and the admin's reach on every store.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::http::{Method, StatusCode};
use chatbot_api::AppState;
use chatbot_api::domain::chatbot::Chatbot;
use chatbot_api::domain::store::{MemoryStore, Store};
use chatbot_api::http::auth::{ApiKeys, Jwt, JwtSettings, KeySource};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::helpers::{Server, TestApp, TestResponse, said};

const SECRET: &str = "a test secret that is longer than 32 bytes";
const INVALID_TOKEN: &str = r#"Bearer error="invalid_token""#;
const NOT_AUTHENTICATED: &str = r#"{"detail":"Not authenticated"}"#;

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/jwt/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn rsa(name: &str) -> EncodingKey {
    EncodingKey::from_rsa_pem(&fixture(name)).unwrap()
}

fn ec() -> EncodingKey {
    EncodingKey::from_ec_pem(&fixture("ec.key.pem")).unwrap()
}

fn hmac(secret: &str) -> EncodingKey {
    EncodingKey::from_secret(secret.as_bytes()).unwrap()
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Claims for `sub` valid for five minutes, with `extra` merged in (a
/// `null` in `extra` removes the claim).
fn claims(sub: &str, extra: Value) -> Value {
    let mut claims = json!({"sub": sub, "exp": now() + 300, "iat": now(), "iss": "https://id.test", "aud": "chatbot"});
    for (name, value) in extra.as_object().unwrap() {
        if value.is_null() {
            claims.as_object_mut().unwrap().remove(name);
        } else {
            claims[name] = value.clone();
        }
    }
    claims
}

fn mint(key: &EncodingKey, alg: Algorithm, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

/// An HS256 token for `sub` from the test secret.
fn token(sub: &str, extra: Value) -> String {
    mint(&hmac(SECRET), Algorithm::HS256, None, &claims(sub, extra))
}

fn settings(source: KeySource) -> JwtSettings {
    JwtSettings {
        issuer: Some("https://id.test".into()),
        audience: Some("chatbot".into()),
        ..JwtSettings::new(source)
    }
}

/// The seed bot on `store`, taking tokens checked with `settings`.
fn jwt_state(store: Arc<dyn Store>, settings: &JwtSettings) -> AppState {
    AppState::new(store, Chatbot::seed(), Default::default()).with_jwt(Jwt::new(settings).unwrap())
}

fn app_with(store: Arc<dyn Store>, settings: &JwtSettings) -> TestApp {
    TestApp::from_state(
        jwt_state(store, settings)
            .with_api_keys(ApiKeys::new(["service-key"]))
            .with_admin_keys(ApiKeys::new(["root-key"])),
    )
}

fn secret_settings() -> JwtSettings {
    settings(KeySource::Secret(SECRET.into()))
}

fn secret_app(store: Arc<dyn Store>) -> TestApp {
    app_with(store, &secret_settings())
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

async fn call_as(
    app: &TestApp,
    token: &str,
    method: Method,
    uri: &str,
    body: Option<Value>,
) -> TestResponse {
    let auth = bearer(token);
    app.call(method, uri, Some(("authorization", &auth)), body)
        .await
}

/// A GET with an API key in `X-API-Key`.
async fn get_with_key(app: &TestApp, key: &str, uri: &str) -> TestResponse {
    app.call(Method::GET, uri, Some(("x-api-key", key)), None)
        .await
}

async fn say(app: &TestApp, token: &str, session: &str, message: &str) -> Value {
    let response = call_as(
        app,
        token,
        Method::POST,
        "/chat",
        Some(json!({"user_message": message, "session_id": session})),
    )
    .await;
    assert_eq!(response.status, StatusCode::OK, "{}", response.text());
    response.json()
}

fn assert_refused(response: &TestResponse, what: &str) {
    assert_eq!(response.status, StatusCode::UNAUTHORIZED, "{what}");
    assert_eq!(response.text(), NOT_AUTHENTICATED, "{what}");
    assert_eq!(
        response.header("www-authenticate"),
        Some(INVALID_TOKEN),
        "{what}"
    );
}

fn b64(value: &Value) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.to_string())
}

#[tokio::test]
async fn every_bad_token_is_the_same_bare_401() {
    let app = secret_app(Arc::new(MemoryStore::new()));
    let good = token("alice", json!({}));
    assert_eq!(
        call_as(&app, &good, Method::GET, "/chat/sessions", None)
            .await
            .status,
        StatusCode::OK
    );
    let unsigned = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(&claims("alice", json!({})))
    );
    let none_signed = format!("{unsigned}c2lnbmF0dXJl");
    let cases: Vec<(&str, String)> = vec![
        ("malformed", "not.a.jwt".into()),
        ("garbage", "eyJhbGciOi.eyJzdWIi.c2ln".into()),
        (
            "expired past the leeway",
            token("alice", json!({"exp": now() - 120})),
        ),
        (
            "not yet valid past the leeway",
            token("alice", json!({"nbf": now() + 300})),
        ),
        (
            "wrong signature",
            mint(
                &hmac("another secret that is longer than 32 bytes"),
                Algorithm::HS256,
                None,
                &claims("alice", json!({})),
            ),
        ),
        (
            "wrong issuer",
            token("alice", json!({"iss": "https://evil.test"})),
        ),
        ("no issuer", token("alice", json!({"iss": null}))),
        ("wrong audience", token("alice", json!({"aud": "other"}))),
        ("no audience", token("alice", json!({"aud": null}))),
        ("no expiry", token("alice", json!({"exp": null}))),
        ("no subject", token("alice", json!({"sub": null}))),
        ("empty subject", token("", json!({}))),
        ("numeric subject", token("alice", json!({"sub": 42}))),
        ("alg none, unsigned", unsigned),
        ("alg none, signed", none_signed),
        (
            "RS256 on a secret-keyed server",
            mint(
                &rsa("rsa1.key.pem"),
                Algorithm::RS256,
                None,
                &claims("alice", json!({})),
            ),
        ),
        (
            "a valid token, one byte changed",
            format!("{}x", &good[..good.len() - 1]),
        ),
    ];
    for (what, token) in &cases {
        for (uri, openai) in [("/chat/sessions", false), ("/v1/models", true)] {
            let response = call_as(&app, token, Method::GET, uri, None).await;
            if openai {
                assert_eq!(response.status, StatusCode::UNAUTHORIZED, "{what}");
                assert_eq!(response.json()["error"]["code"], "invalid_api_key");
                assert_eq!(response.header("www-authenticate"), Some(INVALID_TOKEN));
            } else {
                assert_refused(&response, what);
            }
        }
    }
    let missing = app.call(Method::GET, "/chat/sessions", None, None).await;
    assert_refused(&missing, "no token");
    // Within the 60 s leeway: accepted.
    for (what, extra) in [
        ("expired 30 s ago", json!({"exp": now() - 30})),
        ("valid in 30 s", json!({"nbf": now() + 30})),
    ] {
        let response = call_as(
            &app,
            &token("alice", extra),
            Method::GET,
            "/chat/sessions",
            None,
        )
        .await;
        assert_eq!(response.status, StatusCode::OK, "{what}");
    }
}

#[tokio::test]
async fn a_public_key_file_verifies_rs256_and_es256_and_refuses_hs_confusion() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let rsa_app = app_with(
        store.clone(),
        &settings(KeySource::PublicKeyPem(fixture("rsa1.pub.pem"))),
    );
    let ec_app = app_with(
        store,
        &settings(KeySource::PublicKeyPem(fixture("ec.pub.pem"))),
    );
    let alice = claims("alice", json!({}));
    let rs256 = mint(&rsa("rsa1.key.pem"), Algorithm::RS256, None, &alice);
    let es256 = mint(&ec(), Algorithm::ES256, None, &alice);
    say(&rsa_app, &rs256, "s", "hello").await;
    say(&ec_app, &es256, "t", "hello").await;
    // The public key used as an HMAC secret: the classic confusion.
    let confused = mint(
        &EncodingKey::from_secret(&fixture("rsa1.pub.pem")).unwrap(),
        Algorithm::HS256,
        None,
        &alice,
    );
    for (app, token, what) in [
        (&rsa_app, confused, "HS256 signed with the RSA public key"),
        (
            &rsa_app,
            mint(&rsa("rsa2.key.pem"), Algorithm::RS256, None, &alice),
            "another RSA key",
        ),
        (&rsa_app, es256.clone(), "ES256 on an RSA key"),
        (&ec_app, rs256.clone(), "RS256 on an EC key"),
        (&rsa_app, token("alice", json!({})), "HS256 on an RSA key"),
    ] {
        let response = call_as(app, &token, Method::GET, "/chat/history/s", None).await;
        assert_refused(&response, what);
    }
    assert!(Jwt::new(&settings(KeySource::PublicKeyPem(b"not a key".to_vec()))).is_err());
    assert!(Jwt::new(&settings(KeySource::Secret(b"short".to_vec()))).is_err());
}

/// A JWKS served on loopback: the keys can be swapped and fetches counted.
struct JwksServer {
    keys: Arc<std::sync::Mutex<JwkSet>>,
    hits: Arc<AtomicUsize>,
    url: String,
}

fn jwk(key: &EncodingKey, alg: Algorithm, kid: &str) -> Jwk {
    let mut jwk = Jwk::from_encoding_key(key, alg).unwrap();
    jwk.common.key_id = Some(kid.to_owned());
    jwk
}

impl JwksServer {
    async fn start(keys: Vec<Jwk>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::on(listener, keys)
    }

    fn on(listener: TcpListener, keys: Vec<Jwk>) -> Self {
        let url = format!(
            "http://{}/.well-known/jwks.json",
            listener.local_addr().unwrap()
        );
        let keys = Arc::new(std::sync::Mutex::new(JwkSet { keys }));
        let hits = Arc::new(AtomicUsize::new(0));
        let (served, counted) = (keys.clone(), hits.clone());
        let router = axum::Router::new().route(
            "/.well-known/jwks.json",
            axum::routing::get(move || {
                counted.fetch_add(1, Ordering::SeqCst);
                let set = served.lock().unwrap().clone();
                async move { axum::Json(set) }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        Self { keys, hits, url }
    }

    fn rotate(&self, keys: Vec<Jwk>) {
        self.keys.lock().unwrap().keys = keys;
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

fn jwks_app(url: &str, cooldown: Duration) -> TestApp {
    app_with(
        Arc::new(MemoryStore::new()),
        &JwtSettings {
            jwks_cooldown: cooldown,
            ..settings(KeySource::Jwks(url.to_owned()))
        },
    )
}

async fn status(app: &TestApp, token: &str) -> StatusCode {
    call_as(app, token, Method::GET, "/chat/sessions", None)
        .await
        .status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_keys_verify_and_a_rotation_is_picked_up_without_restart() {
    let (one, two) = (rsa("rsa1.key.pem"), rsa("rsa2.key.pem"));
    let jwks = JwksServer::start(vec![
        jwk(&one, Algorithm::RS256, "one"),
        jwk(&ec(), Algorithm::ES256, "ec"),
    ])
    .await;
    let cooldown = Duration::from_millis(300);
    let app = jwks_app(&jwks.url, cooldown);
    let alice = claims("alice", json!({}));
    let by_one = mint(&one, Algorithm::RS256, Some("one"), &alice);
    assert_eq!(status(&app, &by_one).await, StatusCode::OK);
    let by_ec = mint(&ec(), Algorithm::ES256, Some("ec"), &alice);
    assert_eq!(status(&app, &by_ec).await, StatusCode::OK);
    // A key marked for RS256 does not verify RS512, nor HS256 with its bytes.
    let other_alg = mint(&one, Algorithm::RS512, Some("one"), &alice);
    assert_eq!(status(&app, &other_alg).await, StatusCode::UNAUTHORIZED);
    assert_eq!(jwks.hits(), 1, "fetched once, then cached");

    // The provider rotates: key "two" replaces "one".
    jwks.rotate(vec![jwk(&two, Algorithm::RS256, "two")]);
    tokio::time::sleep(cooldown + Duration::from_millis(50)).await;
    let by_two = mint(&two, Algorithm::RS256, Some("two"), &alice);
    assert_eq!(status(&app, &by_two).await, StatusCode::OK);
    assert_eq!(jwks.hits(), 2, "the unknown kid fetched the set again");
    // The retired key is gone with the old set.
    assert_eq!(status(&app, &by_one).await, StatusCode::UNAUTHORIZED);
    // Tokens signed with the new key keep working from the cache.
    assert_eq!(status(&app, &by_two).await, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_jwks_copy_is_fetched_again_so_a_withdrawn_key_stops_working() {
    let one = rsa("rsa1.key.pem");
    let jwks = JwksServer::start(vec![jwk(&one, Algorithm::RS256, "one")]).await;
    let app = app_with(
        Arc::new(MemoryStore::new()),
        &JwtSettings {
            jwks_cooldown: Duration::from_millis(100),
            jwks_max_age: Duration::from_millis(600),
            ..settings(KeySource::Jwks(jwks.url.clone()))
        },
    );
    let by_one = mint(
        &one,
        Algorithm::RS256,
        Some("one"),
        &claims("alice", json!({})),
    );
    assert_eq!(status(&app, &by_one).await, StatusCode::OK);
    // The provider withdraws key "one" (a leak, say).
    jwks.rotate(vec![jwk(&rsa("rsa2.key.pem"), Algorithm::RS256, "two")]);
    tokio::time::sleep(Duration::from_millis(700)).await;
    // The old copy still answers at once, and starts a fetch behind it.
    assert_eq!(status(&app, &by_one).await, StatusCode::OK);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while jwks.hits() < 2 {
        assert!(std::time::Instant::now() < deadline, "no background fetch");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(status(&app, &by_one).await, StatusCode::UNAUTHORIZED);
    // Requests while the copy is fresh (under its 600 ms) start no more fetches.
    let by_two = mint(
        &rsa("rsa2.key.pem"),
        Algorithm::RS256,
        Some("two"),
        &claims("bob", json!({})),
    );
    let fresh_until = std::time::Instant::now() + Duration::from_millis(150);
    let mut answered = 0;
    while std::time::Instant::now() < fresh_until {
        assert_eq!(status(&app, &by_two).await, StatusCode::OK);
        answered += 1;
    }
    assert!(answered > 1);
    assert_eq!(jwks.hits(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_key_ids_fetch_the_jwks_at_most_once_per_cooldown() {
    let one = rsa("rsa1.key.pem");
    let jwks = JwksServer::start(vec![jwk(&one, Algorithm::RS256, "one")]).await;
    let app = jwks_app(&jwks.url, Duration::from_secs(1));
    let alice = claims("alice", json!({}));
    assert_eq!(
        status(&app, &mint(&one, Algorithm::RS256, Some("one"), &alice)).await,
        StatusCode::OK
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // Twenty tokens naming made-up keys, at once: one fetch at most.
    let attempts = (0..20).map(|i| {
        let token = mint(
            &one,
            Algorithm::RS256,
            Some(&format!("made-up-{i}")),
            &alice,
        );
        let app = &app;
        async move { status(app, &token).await }
    });
    for answered in futures_util::future::join_all(attempts).await {
        assert_eq!(answered, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(jwks.hits(), 2, "one fetch for twenty unknown kids");
    let again = mint(&one, Algorithm::RS256, Some("made-up-again"), &alice);
    assert_eq!(status(&app, &again).await, StatusCode::UNAUTHORIZED);
    assert_eq!(jwks.hits(), 2, "within the cooldown: no fetch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwks_host_that_is_down_means_503_for_tokens_only_until_it_is_back() {
    // A port with nothing listening (yet).
    let parked = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = parked.local_addr().unwrap();
    drop(parked);
    let url = format!("http://{addr}/.well-known/jwks.json");
    let cooldown = Duration::from_millis(200);
    let app = jwks_app(&url, cooldown);
    let one = rsa("rsa1.key.pem");
    let token = mint(
        &one,
        Algorithm::RS256,
        Some("one"),
        &claims("alice", json!({})),
    );

    let unchecked = call_as(&app, &token, Method::GET, "/chat/sessions", None).await;
    assert_eq!(unchecked.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        unchecked.text(),
        r#"{"detail":"Authentication unavailable: try again shortly"}"#
    );
    assert_eq!(unchecked.header("retry-after"), Some("5"));
    let openai = call_as(&app, &token, Method::GET, "/v1/models", None).await;
    assert_eq!(openai.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(openai.json()["error"]["code"], "auth_unavailable");
    // What needs no JWKS is served: health, API keys, and 401 for no token.
    assert_eq!(app.get("/health").await.status, StatusCode::OK);
    let keyed = get_with_key(&app, "service-key", "/chat/sessions").await;
    assert_eq!(keyed.status, StatusCode::OK);
    assert_refused(
        &app.call(Method::GET, "/chat/sessions", None, None).await,
        "no token",
    );

    // The host comes back: after the cooldown the token is checked.
    let listener = TcpListener::bind(addr).await.unwrap();
    let jwks = JwksServer::on(listener, vec![jwk(&one, Algorithm::RS256, "one")]);
    tokio::time::sleep(cooldown + Duration::from_millis(50)).await;
    assert_eq!(status(&app, &token).await, StatusCode::OK);
    assert_eq!(jwks.hits(), 1);
}

#[tokio::test]
async fn the_admin_role_claim_and_value_are_configurable() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let scoped = app_with(
        store.clone(),
        &JwtSettings {
            admin_claim: "scope".into(),
            admin_value: "chat:admin".into(),
            ..secret_settings()
        },
    );
    let nested = app_with(
        store,
        &JwtSettings {
            admin_claim: "realm_access.roles".into(),
            ..secret_settings()
        },
    );
    let uri = "/chat/sessions?owner=alice";
    for (app, extra, allowed) in [
        (&scoped, json!({"scope": "openid chat:admin"}), true),
        (&scoped, json!({"scope": "openid chat:read"}), false),
        (&scoped, json!({"roles": ["admin"]}), false),
        (&nested, json!({"realm_access": {"roles": ["admin"]}}), true),
        (&nested, json!({"realm_access": {"roles": "admin"}}), true),
        (&nested, json!({"realm_access": {"roles": ["user"]}}), false),
        (&nested, json!({"roles": ["admin"]}), false),
    ] {
        let response = call_as(
            app,
            &token("someone", extra.clone()),
            Method::GET,
            uri,
            None,
        )
        .await;
        let expected = if allowed {
            StatusCode::OK
        } else {
            StatusCode::FORBIDDEN
        };
        assert_eq!(response.status, expected, "{extra}");
    }
}

#[tokio::test]
async fn rate_limit_buckets_follow_the_token_subject() {
    let app = TestApp::from_state(
        jwt_state(Arc::new(MemoryStore::new()), &secret_settings()).with_rate_limit(1, 2),
    );
    let (alice, bob) = (token("alice", json!({})), token("bob", json!({})));
    // Two tokens of one subject share its bucket.
    let alice_again = token("alice", json!({"iat": now() - 5}));
    assert_ne!(alice, alice_again);
    for token in [&alice, &alice_again] {
        assert_eq!(status(&app, token).await, StatusCode::OK);
    }
    assert_eq!(status(&app, &alice).await, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(status(&app, &bob).await, StatusCode::OK);
}

#[tokio::test]
async fn the_openapi_document_offers_a_jwt_bearer_and_the_owner_parameter() {
    let app = secret_app(Arc::new(MemoryStore::new()));
    let doc = app.get("/openapi.json").await.json();
    let bearer = &doc["components"]["securitySchemes"]["bearer"];
    assert_eq!(bearer["scheme"], "bearer");
    assert_eq!(bearer["bearerFormat"], "JWT");
    let history = &doc["paths"]["/chat/history/{session_id}"];
    let owner_param = |op: &Value| {
        op["parameters"].as_array().is_some_and(|ps| {
            ps.iter()
                .any(|p| p["name"] == "owner" && p["in"] == "query")
        })
    };
    assert!(owner_param(&history["get"]) && owner_param(&history["delete"]));
    assert!(!owner_param(&doc["paths"]["/chat"]["post"]));
    assert!(history["get"]["security"].is_array());
}

/// Two users and the admin's reach, over HTTP, on one store.
async fn users_are_isolated_and_admins_reach_them_to_read_and_delete(store: Arc<dyn Store>) {
    let app = secret_app(store);
    let alice = token("alice", json!({}));
    let bob = token("bob", json!({}));
    let admin = token("support-7", json!({"roles": ["agent", "admin"]}));
    say(&app, &alice, "same", "alice's secret plan").await;
    say(&app, &alice, "alice-only", "hello").await;
    let first = say(&app, &bob, "same", "What did I just say?").await;
    assert_eq!(
        first["bot_reply"],
        "You haven't said anything yet in this conversation."
    );
    // Another token for the same subject is the same user.
    let alice_later = token("alice", json!({"iat": now() - 60}));
    let history = call_as(&app, &alice_later, Method::GET, "/chat/history/same", None).await;
    assert_eq!(said(&history.json()), ["alice's secret plan"]);
    // An API key is another owner again.
    let keyed = get_with_key(&app, "service-key", "/chat/history/same").await;
    assert_eq!(keyed.status, StatusCode::NOT_FOUND);

    // Bob sees nothing of Alice's, on any route.
    for uri in [
        "/chat/history/alice-only",
        "/chat/history/alice-only/stats",
        "/chat/history/alice-only/export",
        "/chat/history/alice-only/messages/1",
    ] {
        let response = call_as(&app, &bob, Method::GET, uri, None).await;
        assert_eq!(response.status, StatusCode::NOT_FOUND, "{uri}");
    }
    let bob_sessions = call_as(&app, &bob, Method::GET, "/chat/sessions", None).await;
    assert_eq!(bob_sessions.json().as_array().unwrap().len(), 1);
    let hits = call_as(&app, &bob, Method::GET, "/chat/search?q=secret", None).await;
    assert_eq!(hits.json(), json!([]));
    let conversation = call_as(
        &app,
        &alice,
        Method::POST,
        "/v1/conversations",
        Some(json!({"items": [{"role": "user", "content": "v1 secret"}]})),
    )
    .await;
    assert_eq!(
        conversation.status,
        StatusCode::OK,
        "{}",
        conversation.text()
    );
    let conv = conversation.json()["id"].as_str().unwrap().to_owned();
    let items = format!("/v1/conversations/{conv}/items");
    assert_eq!(
        call_as(&app, &bob, Method::GET, &items, None).await.status,
        StatusCode::NOT_FOUND
    );

    // Bob may not address Alice; the refusal changes nothing.
    for (method, uri) in [
        (Method::GET, "/chat/history/same?owner=alice"),
        (Method::GET, "/chat/sessions?owner=alice"),
        (Method::DELETE, "/chat/history/same?owner=alice"),
    ] {
        let response = call_as(&app, &bob, method.clone(), uri, None).await;
        assert_eq!(response.status, StatusCode::FORBIDDEN, "{method} {uri}");
        assert_eq!(
            response.text(),
            r#"{"detail":"Only an admin may address another owner's conversations"}"#
        );
    }
    let refused = call_as(
        &app,
        &bob,
        Method::GET,
        &format!("{items}?owner=alice"),
        None,
    )
    .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert_eq!(refused.json()["error"]["code"], "permission_denied");

    // The admin reads, searches, exports Alice's conversations by her subject.
    let read = call_as(
        &app,
        &admin,
        Method::GET,
        "/chat/history/same?owner=alice",
        None,
    )
    .await;
    assert_eq!(said(&read.json()), ["alice's secret plan"]);
    let sessions = call_as(
        &app,
        &admin,
        Method::GET,
        "/chat/sessions?owner=alice",
        None,
    )
    .await;
    let ids: Vec<Value> = sessions
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["session_id"].clone())
        .collect();
    assert_eq!(ids, [json!("alice-only"), json!(conv), json!("same")]);
    // Paging links keep the owner, so the next page is still Alice's.
    let first = call_as(
        &app,
        &admin,
        Method::GET,
        "/chat/sessions?owner=alice&limit=1",
        None,
    )
    .await;
    let link = first.header("link").expect("a next link").to_owned();
    assert!(link.contains("owner=alice"), "{link}");
    let next = link.trim_start_matches('<').split('>').next().unwrap();
    let second = call_as(&app, &admin, Method::GET, next, None).await;
    assert_eq!(second.json()[0]["session_id"], json!(conv));
    let paged = call_as(
        &app,
        &admin,
        Method::GET,
        "/chat/history/alice-only?owner=alice&limit=1&offset=0",
        None,
    )
    .await;
    assert_eq!(paged.status, StatusCode::OK);
    say(&app, &alice, "alice-only", "second").await;
    let paged = call_as(
        &app,
        &admin,
        Method::GET,
        "/chat/history/alice-only?owner=alice&limit=1",
        None,
    )
    .await;
    let link = paged.header("link").expect("a next link");
    assert!(link.ends_with("&owner=alice>; rel=\"next\""), "{link}");
    let found = call_as(
        &app,
        &admin,
        Method::GET,
        "/chat/search?q=secret&owner=alice",
        None,
    )
    .await;
    // Newest first; both may fall in one second, so compare as a set.
    let found = found.json();
    let mut found = said(&found);
    found.sort_unstable();
    assert_eq!(found, ["alice's secret plan", "v1 secret"]);
    let export = call_as(
        &app,
        &admin,
        Method::GET,
        "/chat/history/same/export?format=markdown&owner=alice",
        None,
    )
    .await;
    assert!(export.text().contains("alice's secret plan"));
    let v1 = call_as(
        &app,
        &admin,
        Method::GET,
        &format!("{items}?owner=alice"),
        None,
    )
    .await;
    assert!(v1.text().contains("v1 secret"), "{}", v1.text());
    // The admin key has the same reach.
    let by_key = call_as(
        &app,
        "root-key",
        Method::GET,
        "/chat/history/same?owner=bob",
        None,
    )
    .await;
    assert_eq!(said(&by_key.json()), ["What did I just say?"]);
    // Without ?owner the admin is one more user, with nothing yet.
    let own = call_as(&app, &admin, Method::GET, "/chat/sessions", None).await;
    assert_eq!(own.json(), json!([]));

    // Writing as someone else is refused and stores nothing.
    for (method, uri, body) in [
        (
            Method::POST,
            "/chat?owner=alice",
            json!({"user_message": "forged", "session_id": "same"}),
        ),
        (
            Method::PATCH,
            "/chat/history/same/messages/1?owner=alice",
            json!({"user_message": "forged"}),
        ),
    ] {
        let response = call_as(&app, &admin, method.clone(), uri, Some(body)).await;
        assert_eq!(response.status, StatusCode::FORBIDDEN, "{method} {uri}");
    }
    let untouched = call_as(&app, &alice, Method::GET, "/chat/history/same", None).await;
    assert_eq!(said(&untouched.json()), ["alice's secret plan"]);

    // The admin deletes one of Alice's conversations; Bob's twin stays.
    let deleted = call_as(
        &app,
        &admin,
        Method::DELETE,
        "/chat/history/same?owner=alice",
        None,
    )
    .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    let gone = call_as(&app, &alice, Method::GET, "/chat/history/same", None).await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
    let kept = call_as(&app, &bob, Method::GET, "/chat/history/same", None).await;
    assert_eq!(said(&kept.json()), ["What did I just say?"]);
}

on_every_store!(users_are_isolated_and_admins_reach_them_to_read_and_delete);

/// The binary configured by flags and environment only; admin actions are
/// logged with who, what and whose, never the token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_takes_jwt_flags_and_logs_admin_actions_without_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("server.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let key_path = format!(
        "{}/tests/fixtures/jwt/rsa1.pub.pem",
        env!("CARGO_MANIFEST_DIR")
    );
    let server = Server::start_with(
        &[
            "--store",
            "memory",
            "--jwt-public-key",
            &key_path,
            "--jwt-issuer",
            "https://id.test",
            "--jwt-audience",
            "chatbot",
            "--jwt-admin-role",
            "support",
        ],
        &[
            ("RUST_LOG", "info"),
            ("CHATBOT_ADMIN_API_KEYS", "root-key-1,root-key-2"),
        ],
        log.into(),
    );
    let key = rsa("rsa1.key.pem");
    let alice = mint(&key, Algorithm::RS256, None, &claims("alice", json!({})));
    let agent = mint(
        &key,
        Algorithm::RS256,
        None,
        &claims("agent-9", json!({"roles": ["support"]})),
    );
    let client = reqwest::Client::new();
    let sent = client
        .post(server.url("/chat"))
        .bearer_auth(&alice)
        .json(&json!({"user_message": "hello", "session_id": "mine"}))
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status(), 200);
    let read = client
        .get(server.url("/chat/history/mine?owner=alice"))
        .bearer_auth(&agent)
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 200);
    let by_key = client
        .delete(server.url("/chat/history/mine?owner=alice"))
        .header("x-api-key", "root-key-2")
        .send()
        .await
        .unwrap();
    assert_eq!(by_key.status(), 204);
    let refused = client
        .get(server.url("/chat/sessions"))
        .bearer_auth("eyJhbGciOiJub25lIn0.eyJzdWIiOiJhIn0.c2ln")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    assert_eq!(
        refused.headers()["www-authenticate"],
        r#"Bearer error="invalid_token""#
    );

    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let log = loop {
        let log = std::fs::read_to_string(&log_path).unwrap();
        if log.matches("admin acts on").count() >= 2 || std::time::Instant::now() > deadline {
            break log;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let actions: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("admin acts on"))
        .collect();
    assert_eq!(actions.len(), 2, "{log}");
    assert!(
        actions[0].contains(r#"admin=sub "agent-9""#)
            && actions[0].contains("method=GET")
            && actions[0].contains(r#"path="/chat/history/mine""#)
            && actions[0].contains(r#"owner="alice""#),
        "{}",
        actions[0]
    );
    assert!(
        actions[1].contains("admin key k") && actions[1].contains("method=DELETE"),
        "{}",
        actions[1]
    );
    for secret in [alice.as_str(), agent.as_str(), "root-key-2"] {
        assert!(!log.contains(secret), "the log holds a credential");
    }
}

#[tokio::test]
async fn routes_about_the_whole_server_are_for_keys_and_admins_not_users() {
    let app = TestApp::from_state(
        jwt_state(Arc::new(MemoryStore::new()), &secret_settings())
            .with_api_keys(ApiKeys::new(["scraper-key"]))
            .with_debug_endpoints(true),
    );
    let user = token("alice", json!({}));
    let admin = token("ops", json!({"roles": ["admin"]}));
    say(&app, &user, "kept", "hello").await;
    for (method, uri) in [
        (Method::GET, "/metrics"),
        (Method::GET, "/debug/sessions"),
        (Method::POST, "/debug/clear"),
    ] {
        let refused = call_as(&app, &user, method.clone(), uri, None).await;
        assert_eq!(refused.status, StatusCode::FORBIDDEN, "{method} {uri}");
        assert_eq!(
            refused.text(),
            r#"{"detail":"Only an API key or an admin may use this route"}"#
        );
    }
    // The refused clear erased nothing.
    let kept = call_as(&app, &user, Method::GET, "/chat/history/kept", None).await;
    assert_eq!(said(&kept.json()), ["hello"]);
    for uri in ["/metrics", "/debug/sessions"] {
        let by_admin = call_as(&app, &admin, Method::GET, uri, None).await;
        assert_eq!(by_admin.status, StatusCode::OK, "{uri}");
        let by_key = get_with_key(&app, "scraper-key", uri).await;
        assert_eq!(by_key.status, StatusCode::OK, "{uri}");
    }
    assert_refused(
        &app.call(Method::GET, "/metrics", None, None).await,
        "no token",
    );
}
