//! The HTTP face of the service: the router and its layers, extractors,
//! errors in each API's shape, JSON bodies, API keys, the rate limit, the
//! OpenAPI document and the accept loop. It reads and writes through
//! `crate::domain`, which knows nothing of HTTP.
//!
//! [`app`] builds the whole router from an [`AppState`], so tests can drive it
//! in-process; [`serve`] runs it on a listener until a shutdown signal.

pub mod auth;
pub mod docs;
pub mod error;
pub mod extract;
pub mod json;
pub mod metrics;
pub mod ratelimit;
pub mod routes;
pub mod server;
pub mod telemetry;
pub mod v1;
pub mod validate;

use std::any::Any;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{FromRef, Request};
use axum::http::StatusCode;
use axum::http::{HeaderName, HeaderValue, Method, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tokio::net::TcpListener;
use tower::ServiceBuilder;
use tower::util::BoxCloneSyncService;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::timeout::RequestBodyTimeoutLayer;

use self::auth::{ApiKeys, Auth, Jwt};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_swagger_ui::SwaggerUi;

use self::validate::Limits;
use crate::domain::accounts::Accounts;
use crate::domain::chatbot::Replier;
use crate::domain::model::ModelClient;
use crate::domain::redis::Redis;
use crate::domain::replies::Replies;
use crate::domain::store::Store;

/// Sign-in attempts a minute from one client address, by default.
pub const DEFAULT_SIGNIN_PER_ADDRESS: u32 = 30;
/// Sign-in attempts a minute for one account, by default.
pub const DEFAULT_SIGNIN_PER_ACCOUNT: u32 = 10;

/// What every handler shares: the store, the reply engine and the limits.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    /// Rules, and a model if one is configured.
    pub replies: Arc<Replies>,
    pub limits: Limits,
    /// Mount the seed's `/debug/*` endpoints (which can erase everything).
    pub debug_endpoints: bool,
    /// API keys, admin keys and JWTs; none configured: an open server.
    pub auth: Arc<Auth>,
    /// Requests per second and burst per key (or client address), if limited.
    pub rate_limit: Option<(u32, u32)>,
    /// Origins allowed to call the API from a browser.
    pub cors_origins: Vec<HeaderValue>,
    /// What the fleet shares (`--redis-url`): here, the rate limit's buckets.
    pub redis: Option<Arc<Redis>>,
    /// Proxies whose `X-Forwarded-For` names the client the limit counts.
    pub trusted_proxies: Vec<ratelimit::ProxyRange>,
    /// Sign-in attempts a minute per client address and per account.
    pub signin_limits: (u32, u32),
    /// Those limits' counts; built by [`app`].
    pub signin_limit: Option<Arc<ratelimit::SignInLimit>>,
}

impl AppState {
    pub fn new(store: Arc<dyn Store>, chatbot: impl Replier, limits: Limits) -> Self {
        Self {
            store,
            replies: Arc::new(Replies::rules(Arc::new(chatbot))),
            limits,
            debug_endpoints: false,
            auth: Arc::default(),
            rate_limit: None,
            cors_origins: Vec::new(),
            redis: None,
            trusted_proxies: Vec::new(),
            signin_limits: (DEFAULT_SIGNIN_PER_ADDRESS, DEFAULT_SIGNIN_PER_ACCOUNT),
            signin_limit: None,
        }
    }

    /// The same state answering through `model`: everything, or with
    /// `rules_first` only what no rule answers.
    pub fn with_model(mut self, model: ModelClient, rules_first: bool) -> Self {
        self.replies = Arc::new(Replies {
            rules: self.replies.rules.clone(),
            model: Some(Arc::new(model)),
            rules_first,
        });
        self
    }

    /// The same state requiring one of `keys` on every conversation route.
    pub fn with_api_keys(mut self, keys: ApiKeys) -> Self {
        Arc::make_mut(&mut self.auth).keys = keys;
        self
    }

    /// The same state accepting `keys` as admin keys: their own
    /// conversations, and anyone's to read and delete with `?owner=`.
    pub fn with_admin_keys(mut self, keys: ApiKeys) -> Self {
        Arc::make_mut(&mut self.auth).admin_keys = keys;
        self
    }

    /// The same state accepting bearer JWTs that `jwt` verifies.
    pub fn with_jwt(mut self, jwt: Jwt) -> Self {
        Arc::make_mut(&mut self.auth).jwt = Some(Arc::new(jwt));
        self
    }

    /// The same state with accounts of its own (`--accounts`).
    pub fn with_accounts(mut self, accounts: Arc<Accounts>) -> Self {
        Arc::make_mut(&mut self.auth).accounts = Some(accounts);
        self
    }

    /// The same state allowing `per_address` sign-in attempts a minute
    /// from one client address and `per_account` for one account.
    pub fn with_signin_limits(mut self, per_address: u32, per_account: u32) -> Self {
        self.signin_limits = (per_address, per_account);
        self
    }

    /// The same state limiting each client to `per_second` with a `burst`.
    pub fn with_rate_limit(mut self, per_second: u32, burst: u32) -> Self {
        self.rate_limit = Some((per_second, burst));
        self
    }

    /// The same state sharing its rate limit with every instance on `redis`.
    pub fn with_redis(mut self, redis: Arc<Redis>) -> Self {
        self.redis = Some(redis);
        self
    }

    /// The same state counting requests from `proxies` against the client
    /// they forward for.
    pub fn with_trusted_proxies(mut self, proxies: Vec<ratelimit::ProxyRange>) -> Self {
        self.trusted_proxies = proxies;
        self
    }

    /// The same state allowing these origins (CORS).
    pub fn with_cors_origins(mut self, origins: Vec<HeaderValue>) -> Self {
        self.cors_origins = origins;
        self
    }

    /// The same state with the debug endpoints on or off.
    pub fn with_debug_endpoints(mut self, on: bool) -> Self {
        self.debug_endpoints = on;
        self
    }
}

impl FromRef<AppState> for Arc<Auth> {
    fn from_ref(state: &AppState) -> Self {
        state.auth.clone()
    }
}

impl FromRef<AppState> for Limits {
    fn from_ref(state: &AppState) -> Self {
        state.limits
    }
}

/// The whole HTTP application as one service: the documented routes,
/// `/openapi.json`, Swagger UI at `/docs`, FastAPI's 404/405 bodies for
/// everything else, and around them the body timeout, CORS, panic catching
/// and the access log.
pub type App = BoxCloneSyncService<Request<Body>, Response, Infallible>;

/// Builds the [`App`] for `state`.
///
/// The layers wrap the router as a whole rather than through
/// `Router::layer`, which would wrap (and clone, per request) every route.
pub fn app(mut state: AppState) -> App {
    if state.auth.accounts.is_some() {
        let (per_address, per_account) = state.signin_limits;
        state.signin_limit = Some(Arc::new(ratelimit::SignInLimit::new(
            per_address,
            per_account,
            state.redis.clone(),
            state.trusted_proxies.clone(),
        )));
    }
    let (router, api) = documented(&state);
    // Without configured origins there is no CORS layer at all: no headers, no cost.
    let cors = (!state.cors_origins.is_empty()).then(|| {
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(state.cors_origins.clone()))
            .allow_methods([Method::GET, Method::POST, Method::PATCH, Method::DELETE])
            .allow_headers([
                header::CONTENT_TYPE,
                header::AUTHORIZATION,
                HeaderName::from_static("x-api-key"),
            ])
            .expose_headers([
                header::LINK,
                HeaderName::from_static("x-total-count"),
                header::RETRY_AFTER,
            ])
    });
    let body_timeout = state.limits.request_timeout;
    // The recorder exists before the first request counts.
    metrics::handle();
    let router = router
        .merge(
            axum::Router::from(SwaggerUi::new("/docs").url("/openapi.json", api))
                .layer(middleware::map_response(docs_headers)),
        )
        // Around every route, so the key check's 401s and the limit's 429s count too.
        .layer(middleware::from_fn(metrics::track))
        // Applies to the routes above, so it comes after them.
        .method_not_allowed_fallback(error::method_not_allowed)
        .fallback(error::not_found)
        .with_state(state);
    let service = ServiceBuilder::new()
        .option_layer(
            telemetry::access_log_enabled().then(|| middleware::from_fn(telemetry::access_log)),
        )
        .map_response(|response: Response<_>| response.map(Body::new))
        .layer(CatchPanicLayer::custom(panic_response))
        .option_layer(cors)
        .layer(RequestBodyTimeoutLayer::new(body_timeout))
        .service(router);
    BoxCloneSyncService::new(service)
}

/// Every route with its OpenAPI operation: registering a route through
/// `utoipa_axum::routes!` is what documents it.
pub fn api_router(state: &AppState) -> OpenApiRouter<AppState> {
    // About the whole server: API keys and admins only, once callers are told apart.
    let mut operators = metrics::router();
    if state.debug_endpoints {
        operators = operators.merge(routes::debug::router());
    }
    if !state.auth.is_open() {
        operators = operators.route_layer(middleware::from_fn(auth::require_operator));
    }
    let mut conversations = OpenApiRouter::new()
        .merge(operators)
        .merge(routes::chat::router())
        .merge(routes::history::router())
        .merge(routes::messages::router())
        .merge(routes::sessions::router())
        .merge(routes::analytics::router());
    let mut openai = v1::router();
    // The signed-in account's own routes and the admin's: behind the same check.
    let mut accounts = OpenApiRouter::new();
    if state.auth.accounts.is_some() {
        // Accounts on: the server is never open.
        accounts = routes::auth::account_router()
            .merge(routes::admin::router())
            .route_layer(middleware::from_fn_with_state(
                state.auth.clone(),
                auth::authenticate,
            ));
    }
    // Layers apply to the routes added before them: key check first, then
    // the rate limit around it, so floods of bad keys are limited too.
    // An open server has one owner: no key to check on each request.
    if !state.auth.is_open() {
        conversations = conversations.route_layer(middleware::from_fn_with_state(
            state.auth.clone(),
            auth::authenticate,
        ));
        openai = openai.route_layer(middleware::from_fn_with_state(
            state.auth.clone(),
            auth::authenticate_openai,
        ));
    }
    if let Some((per_second, burst)) = state.rate_limit {
        let limiter = ratelimit::limiter(
            per_second,
            burst,
            state.auth.clone(),
            state.redis.clone(),
            state.trusted_proxies.clone(),
        );
        conversations = conversations.route_layer(middleware::from_fn_with_state(
            limiter.clone(),
            ratelimit::limit,
        ));
        openai = openai.route_layer(middleware::from_fn_with_state(
            limiter,
            ratelimit::limit_openai,
        ));
    }
    let mut public = routes::auth::config_router();
    if state.auth.accounts.is_some() {
        public = public.merge(routes::auth::router());
    }
    OpenApiRouter::with_openapi(docs::ApiDoc::openapi())
        .merge(conversations)
        .merge(openai)
        .merge(accounts)
        .merge(public)
        .merge(routes::health::router())
        .merge(routes::ui::router())
}

/// The routes and the OpenAPI document served at `/openapi.json`.
fn documented(state: &AppState) -> (axum::Router<AppState>, utoipa::openapi::OpenApi) {
    let (router, mut api) = api_router(state).split_for_parts();
    if !state.auth.is_open() {
        docs::require_auth(&mut api, &state.auth);
    }
    (router, api)
}

/// Swagger UI's policy: everything from this server, as for the pages, but
/// styles may be inline (its components set them).
const DOCS_POLICY: &str = "default-src 'self'; script-src 'self'; \
    style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; \
    frame-ancestors 'none'; base-uri 'none'; form-action 'self'; object-src 'none'";

/// The security headers of every page, on `/docs`.
async fn docs_headers(mut response: Response) -> Response {
    routes::ui::add_security_headers(response.headers_mut(), DOCS_POLICY);
    response
}

/// A panic in a handler becomes a bare 500: logged here, never shown.
fn panic_response(panic: Box<dyn Any + Send + 'static>) -> Response {
    let message = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("(no message)");
    tracing::error!(panic = message, "handler panicked");
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        Json(json!({ "detail": "Internal Server Error" })),
    )
        .into_response()
}

/// Serves `state` on `listener` until `shutdown` completes; requests already
/// in flight are allowed to finish.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let header_timeout = state.limits.request_timeout;
    // Only the rate limits look at the client's address.
    let peer_info = state.rate_limit.is_some() || state.auth.accounts.is_some();
    server::serve(listener, app(state), header_timeout, peer_info, shutdown).await
}
