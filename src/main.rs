//! The `chatbot-api` binary: parse flags, start logging, open the store,
//! serve until a signal, then close the store.

use std::process::ExitCode;
use std::sync::Arc;

use axum::http::HeaderValue;
use chatbot_api::config::Config;
use chatbot_api::domain::accounts::db::AccountDb;
use chatbot_api::domain::accounts::{
    Accounts, PASSWORD_MAX, PASSWORD_MIN, USERNAME_MAX, USERNAME_MIN, valid_password,
    valid_username,
};
use chatbot_api::domain::chatbot::Chatbot;
use chatbot_api::domain::model::ModelClient;
use chatbot_api::domain::redis::Redis;
use chatbot_api::domain::store::spawn_expiry;
use chatbot_api::domain::store::{Caps, StoreOptions};
use chatbot_api::http::auth::{ApiKeys, Jwt};
use chatbot_api::http::telemetry;
use chatbot_api::{AppState, serve};
use clap::Parser;
use tokio::net::TcpListener;

/// mimalloc: measured faster and smaller than the system allocator for this
/// workload (benches/README.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let config = Config::parse();
    // Outlives the runtime, so that the access lines its threads still hold
    // when they stop are written out (see telemetry).
    let _log_writer = telemetry::init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_park(telemetry::flush_access_lines)
        .on_thread_stop(telemetry::flush_access_lines)
        .build();
    match runtime {
        Ok(runtime) => runtime.block_on(run(config)),
        Err(err) => {
            eprintln!("chatbot-api: cannot start the async runtime: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> ExitCode {
    let chatbot = match &config.rules {
        None => Chatbot::seed(),
        Some(path) => match Chatbot::from_rules_file(path) {
            Ok(chatbot) => chatbot,
            Err(err) => {
                eprintln!("chatbot-api: {err}");
                return ExitCode::FAILURE;
            }
        },
    };
    let model = match config
        .model()
        .and_then(|m| m.map(ModelClient::new).transpose())
    {
        Ok(model) => model,
        Err(err) => {
            eprintln!("chatbot-api: {err}");
            return ExitCode::FAILURE;
        }
    };
    let jwt = match config
        .jwt()
        .and_then(|s| s.as_ref().map(Jwt::new).transpose())
    {
        Ok(jwt) => jwt,
        Err(err) => {
            eprintln!("chatbot-api: {err}");
            return ExitCode::FAILURE;
        }
    };
    let mut origins = Vec::with_capacity(config.cors_origins.len());
    for origin in &config.cors_origins {
        match HeaderValue::from_str(origin) {
            Ok(value) => origins.push(value),
            Err(_) => {
                eprintln!("chatbot-api: --cors-origin {origin:?} is not a valid origin");
                return ExitCode::FAILURE;
            }
        }
    }
    let caps = Caps {
        max_sessions: config.max_sessions,
        max_messages_per_session: config.max_messages_per_session,
    };
    let redis = match config
        .redis_url
        .as_deref()
        .map(|url| Redis::open(url, &config.redis_prefix))
        .transpose()
    {
        Ok(redis) => redis,
        Err(err) => {
            eprintln!("chatbot-api: {err}");
            return ExitCode::FAILURE;
        }
    };
    let options = StoreOptions {
        caps,
        cache_bytes: usize::try_from(config.cache_mb << 20).unwrap_or(usize::MAX),
        sync: config.sync,
        redis: redis.clone(),
    };
    let store = match config.store.open_tuned(config.db_pool_size, options).await {
        Ok(store) => store,
        Err(err) => {
            eprintln!("chatbot-api: cannot open store {}: {err}", config.store);
            return ExitCode::FAILURE;
        }
    };
    let accounts = match config.accounts() {
        None => None,
        Some(settings) => {
            let opened = match AccountDb::open(&config.store).await {
                Ok(db) => Accounts::new(db, settings).await,
                Err(err) => Err(err),
            };
            match opened {
                Ok(accounts) => {
                    if let Err(err) = bootstrap_admin(&config, &accounts).await {
                        eprintln!("chatbot-api: {err}");
                        return ExitCode::FAILURE;
                    }
                    Some(Arc::new(accounts))
                }
                Err(err) => {
                    eprintln!("chatbot-api: cannot open accounts: {err}");
                    return ExitCode::FAILURE;
                }
            }
        }
    };
    let listener = match TcpListener::bind((config.host.as_str(), config.port)).await {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!(
                "chatbot-api: cannot listen on {}:{}: {err}",
                config.host, config.port
            );
            return ExitCode::FAILURE;
        }
    };
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(
            store = %config.store,
            keys = config.api_keys.len(),
            admin_keys = config.admin_api_keys.len(),
            jwt = ?jwt,
            accounts = ?accounts,
            redis = redis.as_ref().map(|r| r.shown()),
            "listening on http://{addr}"
        );
    }
    if let Some(ttl) = config.session_ttl {
        spawn_expiry(
            store.clone(),
            std::time::Duration::from_secs(ttl),
            redis.clone(),
        );
    }

    let mut state = AppState::new(store.clone(), chatbot, config.limits())
        .with_debug_endpoints(config.debug_endpoints)
        .with_api_keys(ApiKeys::new(&config.api_keys))
        .with_admin_keys(ApiKeys::new(&config.admin_api_keys))
        .with_cors_origins(origins)
        .with_trusted_proxies(config.trusted_proxies.clone());
    if let Some(accounts) = &accounts {
        spawn_refresh_expiry(accounts.clone());
        state = state
            .with_accounts(accounts.clone())
            .with_signin_limits(config.signin_limit_address, config.signin_limit);
    }
    if let Some(jwt) = jwt {
        jwt.prefetch();
        state = state.with_jwt(jwt);
    }
    if let Some(model) = model {
        let rules_first = config.rules.is_some();
        tracing::info!(model = %model.config().model, rules_first, "replies from a model");
        state = state.with_model(model, rules_first);
    }
    if let Some(redis) = redis {
        state = state.with_redis(redis);
    }
    if let Some(per_second) = config.rate_limit {
        state = state.with_rate_limit(per_second, config.rate_limit_burst);
    }
    let served = serve(listener, state, shutdown_signal()).await;
    if let Some(accounts) = &accounts {
        accounts.close().await;
    }
    store.close().await;
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("chatbot-api: server error: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Makes `--admin-username` the first account, an admin, if none exists.
async fn bootstrap_admin(config: &Config, accounts: &Accounts) -> Result<(), String> {
    let (Some(username), Some(password)) = (&config.admin_username, &config.admin_password) else {
        return Ok(());
    };
    let username = username.to_ascii_lowercase();
    if !valid_username(&username) {
        return Err(format!(
            "--admin-username: {USERNAME_MIN} to {USERNAME_MAX} of A-Z a-z 0-9 . _ -"
        ));
    }
    if !valid_password(password) {
        return Err(format!(
            "CHATBOT_ADMIN_PASSWORD: {PASSWORD_MIN} to {PASSWORD_MAX} characters"
        ));
    }
    match accounts.bootstrap_admin(&username, password.clone()).await {
        Ok(true) => {
            tracing::info!(username = %username, "first account made: an admin");
            Ok(())
        }
        Ok(false) => Ok(()),
        Err(err) => Err(format!("cannot make the first admin: {err}")),
    }
}

/// Drops expired refresh tokens once an hour.
fn spawn_refresh_expiry(accounts: Arc<Accounts>) {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(std::time::Duration::from_secs(3600));
        loop {
            every.tick().await;
            if let Err(err) = accounts.expire().await {
                tracing::warn!(error = %err, "could not drop expired refresh tokens");
            }
        }
    });
}

/// Completes on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutting down: finishing requests in flight");
}
