//! Command-line flags, each with an environment variable of the same meaning.

use std::str::FromStr;

use clap::{ArgGroup, Parser};

use crate::domain::accounts::{Settings as AccountSettings, Signup};
use crate::domain::model::ModelConfig;
use crate::domain::store::{StoreKind, SyncMode};
use crate::http::auth::{JwtSettings, KeySource};
use crate::http::ratelimit::ProxyRange;
use crate::http::validate::Limits;
use crate::http::{DEFAULT_SIGNIN_PER_ACCOUNT, DEFAULT_SIGNIN_PER_ADDRESS};

/// A conversation-history chat server, wire-compatible with the FastAPI tutorial server.
#[derive(Debug, Clone, Parser)]
#[command(name = "chatbot-api", version, about, long_about = None)]
#[command(group(ArgGroup::new("jwt_keys").multiple(false)))]
pub struct Config {
    /// Address to listen on (an IP address or a host name).
    #[arg(long, env = "CHATBOT_HOST", default_value = "127.0.0.1")]
    pub host: String,

    /// TCP port to listen on; 0 picks a free one.
    #[arg(long, env = "CHATBOT_PORT", default_value_t = 8000)]
    pub port: u16,

    /// Where conversations live: `memory` (lost on exit), `sqlite:PATH` (one
    /// file, created if missing) or a `postgres://user:pass@host/db` URL
    /// (several instances may share it).
    #[arg(long, env = "CHATBOT_STORE", default_value = "sqlite:chatbot.db",
          value_parser = StoreKind::parse)]
    pub store: StoreKind,

    /// PostgreSQL connections per instance, plus one the read cache's
    /// version checks keep (SQLite has one writer and four readers).
    #[arg(long, env = "CHATBOT_DB_POOL_SIZE", default_value_t = 8,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub db_pool_size: u32,

    /// SQLite and PostgreSQL: megabytes of RAM for the read cache of whole
    /// sessions (least recently used dropped past it; a dropped session is
    /// read from the database again when asked for). PostgreSQL checks each
    /// cached session against the database in the read that serves it.
    #[arg(long, env = "CHATBOT_CACHE_MB", default_value_t = 256,
          value_parser = clap::value_parser!(u64).range(1..=1 << 20))]
    pub cache_mb: u64,

    /// SQLite: when a write is acknowledged. `fsync` (default): once the
    /// write-ahead log is flushed to disk, so it survives power loss. `os`:
    /// once the OS has it, so it survives the process crashing but the last
    /// acknowledged writes may be lost if the machine loses power or the
    /// kernel crashes.
    #[arg(long, env = "CHATBOT_SYNC", default_value = "fsync", value_parser = SyncMode::parse)]
    pub sync: SyncMode,

    /// JSON file of reply rules: {"rules":[{"any":["price"],"reply":"…"}],"fallback":"…"}.
    /// Without it the seed's replies are used.
    #[arg(long, env = "CHATBOT_RULES")]
    pub rules: Option<std::path::PathBuf>,

    /// Mount the seed's debug endpoints: GET /debug/sessions and POST /debug/clear,
    /// which ERASES EVERY CONVERSATION. Off by default; never on a shared server.
    #[arg(long, env = "CHATBOT_DEBUG_ENDPOINTS")]
    pub debug_endpoints: bool,

    /// Largest accepted request body in bytes; larger bodies get a 413.
    #[arg(long, env = "CHATBOT_MAX_BODY_BYTES", default_value_t = 64 * 1024,
          value_parser = clap::value_parser!(u64).range(1..=1 << 30))]
    pub max_body_bytes: u64,

    /// Seconds a client may take to send a request's headers or body (408 and
    /// the connection closed after); also how long an idle keep-alive
    /// connection is kept open.
    #[arg(long, env = "CHATBOT_REQUEST_TIMEOUT", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub request_timeout: u64,

    /// An API key clients must send (`Authorization: Bearer KEY` or `X-API-Key`);
    /// repeat for several. Each key sees only its own sessions. Also
    /// CHATBOT_API_KEYS, comma-separated. None: the server is open.
    #[arg(
        long = "api-key",
        env = "CHATBOT_API_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub api_keys: Vec<String>,

    /// An admin API key: its own conversations, and anyone's to read, search,
    /// export and delete by adding `?owner=SUB`; repeatable. Also
    /// CHATBOT_ADMIN_API_KEYS, comma-separated.
    #[arg(
        long = "admin-api-key",
        env = "CHATBOT_ADMIN_API_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub admin_api_keys: Vec<String>,

    /// Accept bearer JWTs signed with this shared secret (HS256/384/512; at
    /// least 32 bytes); give it through the environment. Each token's `sub`
    /// owns its conversations.
    #[arg(
        long,
        env = "CHATBOT_JWT_SECRET",
        hide_env_values = true,
        group = "jwt_keys"
    )]
    pub jwt_secret: Option<String>,

    /// Accept bearer JWTs signed by this public key: a PEM file (RSA, EC
    /// P-256/P-384 or Ed25519).
    #[arg(long, env = "CHATBOT_JWT_PUBLIC_KEY", group = "jwt_keys")]
    pub jwt_public_key: Option<std::path::PathBuf>,

    /// Accept bearer JWTs signed by a key of the identity provider's JWKS at
    /// this URL. Fetched at start without waiting (tokens get 503 until it
    /// arrives), again when a token names an unknown key id (see
    /// --jwt-jwks-cooldown), and in the background once the copy in hand is
    /// over 10 minutes old.
    #[arg(long, env = "CHATBOT_JWT_JWKS_URL", group = "jwt_keys")]
    pub jwt_jwks_url: Option<String>,

    /// The `iss` every token must carry.
    #[arg(long, env = "CHATBOT_JWT_ISSUER", requires = "jwt_keys")]
    pub jwt_issuer: Option<String>,

    /// A value every token's `aud` must hold.
    #[arg(long, env = "CHATBOT_JWT_AUDIENCE", requires = "jwt_keys")]
    pub jwt_audience: Option<String>,

    /// The token claim listing roles or scopes: an array of strings or a
    /// space-separated string; a dotted path reaches into objects
    /// (`realm_access.roles`).
    #[arg(long, env = "CHATBOT_JWT_ADMIN_CLAIM", default_value = "roles")]
    pub jwt_admin_claim: String,

    /// The role (or scope) in that claim that makes a token an admin's.
    #[arg(long, env = "CHATBOT_JWT_ADMIN_ROLE", default_value = "admin")]
    pub jwt_admin_role: String,

    /// Least seconds between two JWKS fetches caused by tokens naming an
    /// unknown key id (a token naming one meanwhile gets 401).
    #[arg(long, env = "CHATBOT_JWT_JWKS_COOLDOWN", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(0..=86_400))]
    pub jwt_jwks_cooldown: u64,

    /// Requests per second allowed per API key (per client address without keys); off by default.
    #[arg(long, env = "CHATBOT_RATE_LIMIT", value_parser = clap::value_parser!(u32).range(1..))]
    pub rate_limit: Option<u32>,

    /// Requests allowed in a burst above the rate limit.
    #[arg(long, env = "CHATBOT_RATE_LIMIT_BURST", default_value_t = 20,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub rate_limit_burst: u32,

    /// A load balancer or proxy (an address, or a network such as
    /// 10.0.0.0/8) whose requests the rate limit counts against the client
    /// its `X-Forwarded-For` names; repeatable. Also CHATBOT_TRUSTED_PROXIES,
    /// comma-separated. None by default: the peer address counts.
    #[arg(long = "trusted-proxy", env = "CHATBOT_TRUSTED_PROXIES", value_delimiter = ',',
          value_parser = ProxyRange::parse)]
    pub trusted_proxies: Vec<ProxyRange>,

    /// Most sessions kept (507 for a new one past it); unlimited by default.
    #[arg(long, env = "CHATBOT_MAX_SESSIONS")]
    pub max_sessions: Option<usize>,

    /// Most messages one session keeps (507 past it); unlimited by default.
    #[arg(long, env = "CHATBOT_MAX_MESSAGES_PER_SESSION")]
    pub max_messages_per_session: Option<usize>,

    /// Remove a session untouched (no new message) for this many seconds; off by default.
    #[arg(long, env = "CHATBOT_SESSION_TTL", value_parser = clap::value_parser!(u64).range(1..))]
    pub session_ttl: Option<u64>,

    /// Redis shared by several instances (`redis://[user:pass@]host:port/db`;
    /// give a password through the environment): one rate limit for the
    /// whole fleet, a session cache in front of PostgreSQL, one expiry sweep
    /// per period. Optional: without it, or while it is unreachable, each
    /// instance limits on its own and checks the database.
    #[arg(long, env = "CHATBOT_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,

    /// Prefix of every Redis key this server writes, so that several
    /// deployments can share one Redis.
    #[arg(long, env = "CHATBOT_REDIS_PREFIX", default_value = "chatbot:")]
    pub redis_prefix: String,

    /// An origin allowed to call the API from a browser (CORS); repeatable.
    /// Also CHATBOT_CORS_ORIGINS, comma-separated. None by default.
    #[arg(
        long = "cors-origin",
        env = "CHATBOT_CORS_ORIGINS",
        value_delimiter = ','
    )]
    pub cors_origins: Vec<String>,

    /// Base URL of an OpenAI-compatible server to answer with a model, e.g.
    /// `http://localhost:11434/v1` (Ollama). With `--rules` too, a rule that
    /// matches answers first and the model answers the rest; alone, the model
    /// answers everything. Off by default.
    #[arg(long, env = "CHATBOT_LLM_URL")]
    pub llm_url: Option<String>,

    /// The model's name on that server (needed with `--llm-url`).
    #[arg(long, env = "CHATBOT_LLM_MODEL")]
    pub llm_model: Option<String>,

    /// API key for the model server, sent as a bearer token; give it through
    /// the environment, not the command line. Never logged.
    #[arg(long, env = "CHATBOT_LLM_API_KEY", hide_env_values = true)]
    pub llm_api_key: Option<String>,

    /// System prompt sent first with every message: the text, or `@FILE` to
    /// read it from a file.
    #[arg(long, env = "CHATBOT_LLM_SYSTEM_PROMPT")]
    pub llm_system_prompt: Option<String>,

    /// How many of the session's latest exchanges are sent to the model.
    #[arg(long, env = "CHATBOT_LLM_CONTEXT", default_value_t = 20,
          value_parser = clap::value_parser!(u64).range(0..=10_000))]
    pub llm_context: u64,

    /// Seconds the model may take for a whole answer (504 past it).
    #[arg(long, env = "CHATBOT_LLM_TIMEOUT", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub llm_timeout: u64,

    /// Longest accepted `user_message`, in characters; longer ones get a 422.
    #[arg(long, env = "CHATBOT_MAX_MESSAGE_CHARS", default_value_t = 4000,
          value_parser = clap::value_parser!(u64).range(1..=1 << 24))]
    pub max_message_chars: u64,

    /// Accounts of the server's own: sign-up and sign-in with a password
    /// (`/auth/*`), tokens the server signs (with `--jwt-secret`, or a key
    /// generated once and kept in the store), personal API keys, and admins
    /// who manage users (`/admin/users`). Every conversation route then
    /// needs a token or a key. The first account made is an admin.
    #[arg(long, env = "CHATBOT_ACCOUNTS")]
    pub accounts: bool,

    /// Who may create an account (with --accounts): `open` (anyone),
    /// `closed` (only admins, through /admin/users; the first account
    /// excepted) or `approval` (anyone, but an admin approves each).
    #[arg(long, env = "CHATBOT_SIGNUP", default_value = "closed", value_parser = Signup::from_str)]
    pub signup: Signup,

    /// With --accounts: the first account, an admin, made at start if no
    /// account exists yet (with --admin-password), so that nobody else can
    /// sign up first. Ignored once an account exists.
    #[arg(long, env = "CHATBOT_ADMIN_USERNAME", requires = "admin_password")]
    pub admin_username: Option<String>,

    /// The first admin's password (8 to 128 characters); give it through the
    /// environment, never on the command line.
    #[arg(
        long,
        env = "CHATBOT_ADMIN_PASSWORD",
        hide_env_values = true,
        requires = "admin_username"
    )]
    pub admin_password: Option<String>,

    /// Seconds an access token the server signs stays valid.
    #[arg(long, env = "CHATBOT_ACCESS_TOKEN_TTL", default_value_t = 900,
          value_parser = clap::value_parser!(u64).range(10..=86_400))]
    pub access_token_ttl: u64,

    /// Seconds a refresh token stays valid if unused (each use makes a new one).
    #[arg(long, env = "CHATBOT_REFRESH_TOKEN_TTL", default_value_t = 30 * 86_400,
          value_parser = clap::value_parser!(u64).range(60..=365 * 86_400))]
    pub refresh_token_ttl: u64,

    /// Seconds a spent refresh token still works (two tabs refreshing with
    /// one cookie at once); used again after that, it revokes every token
    /// of its sign-in. 0: never.
    #[arg(long, env = "CHATBOT_REFRESH_REUSE_GRACE", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(0..=300))]
    pub refresh_reuse_grace: u64,

    /// Password hashes computed at once (each ~20 ms of a core and 19 MiB);
    /// more sign-ins wait their turn. Default: half the cores, at least 1.
    #[arg(long, env = "CHATBOT_PASSWORD_HASH_CONCURRENCY",
          value_parser = clap::value_parser!(u64).range(1..=256))]
    pub password_hash_concurrency: Option<u64>,

    /// Sign-in attempts a minute for one account (sign-ins and password
    /// changes), shared by the fleet with --redis-url (and refused while
    /// Redis is unreachable).
    #[arg(long, env = "CHATBOT_SIGNIN_LIMIT", default_value_t = DEFAULT_SIGNIN_PER_ACCOUNT,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub signin_limit: u32,

    /// Sign-in and sign-up attempts a minute from one client address.
    #[arg(long, env = "CHATBOT_SIGNIN_LIMIT_ADDRESS", default_value_t = DEFAULT_SIGNIN_PER_ADDRESS,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub signin_limit_address: u32,
}

impl Config {
    /// How accounts are configured, if `--accounts` is given.
    pub fn accounts(&self) -> Option<AccountSettings> {
        self.accounts.then(|| AccountSettings {
            signup: self.signup,
            access_ttl: std::time::Duration::from_secs(self.access_token_ttl),
            refresh_ttl: std::time::Duration::from_secs(self.refresh_token_ttl),
            hash_concurrency: self.password_hash_concurrency.map_or_else(
                || std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1)),
                |n| usize::try_from(n).unwrap_or(1),
            ),
            secret: self.jwt_secret.as_ref().map(|s| s.as_bytes().to_vec()),
            reuse_grace: std::time::Duration::from_secs(self.refresh_reuse_grace),
        })
    }

    /// The model to answer with, if `--llm-url` is given.
    pub fn model(&self) -> Result<Option<ModelConfig>, String> {
        let Some(url) = &self.llm_url else {
            return Ok(None);
        };
        let model = self
            .llm_model
            .clone()
            .filter(|m| !m.is_empty())
            .ok_or("--llm-url needs --llm-model (the model's name on that server)")?;
        let system_prompt = match self.llm_system_prompt.as_deref() {
            Some(text) => match text.strip_prefix('@') {
                Some(path) => Some(
                    std::fs::read_to_string(path)
                        .map_err(|e| format!("--llm-system-prompt: cannot read {path}: {e}"))?,
                ),
                None => Some(text.to_owned()),
            },
            None => None,
        };
        Ok(Some(ModelConfig {
            url: url.clone(),
            model,
            api_key: self.llm_api_key.clone().filter(|k| !k.is_empty()),
            system_prompt,
            context: usize::try_from(self.llm_context).unwrap_or(usize::MAX),
            timeout: std::time::Duration::from_secs(self.llm_timeout),
        }))
    }

    /// How bearer JWTs are checked, if one of the `--jwt-*` key flags is given.
    pub fn jwt(&self) -> Result<Option<JwtSettings>, String> {
        let source =
            if let Some(secret) = &self.jwt_secret {
                KeySource::Secret(secret.as_bytes().to_vec())
            } else if let Some(path) = &self.jwt_public_key {
                KeySource::PublicKeyPem(std::fs::read(path).map_err(|e| {
                    format!("--jwt-public-key: cannot read {}: {e}", path.display())
                })?)
            } else if let Some(url) = &self.jwt_jwks_url {
                KeySource::Jwks(url.clone())
            } else {
                return Ok(None);
            };
        Ok(Some(JwtSettings {
            issuer: self.jwt_issuer.clone().filter(|s| !s.is_empty()),
            audience: self.jwt_audience.clone().filter(|s| !s.is_empty()),
            admin_claim: self.jwt_admin_claim.clone(),
            admin_value: self.jwt_admin_role.clone(),
            jwks_cooldown: std::time::Duration::from_secs(self.jwt_jwks_cooldown),
            ..JwtSettings::new(source)
        }))
    }

    /// The request limits these flags set.
    pub fn limits(&self) -> Limits {
        Limits {
            max_message_chars: usize::try_from(self.max_message_chars).unwrap_or(usize::MAX),
            max_body_bytes: usize::try_from(self.max_body_bytes).unwrap_or(usize::MAX),
            request_timeout: std::time::Duration::from_secs(self.request_timeout),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_seed() {
        let config = Config::try_parse_from(["chatbot-api"]).unwrap();
        assert_eq!(config.host, "127.0.0.1");
        assert_eq!(config.port, 8000);
        assert_eq!(config.store, StoreKind::Sqlite("chatbot.db".into()));
        assert_eq!(config.db_pool_size, 8);
        assert_eq!(config.limits(), Limits::default());
    }

    #[test]
    fn bad_values_are_refused() {
        for args in [
            &["chatbot-api", "--port", "70000"][..],
            &["chatbot-api", "--port", "http"],
            &["chatbot-api", "--max-body-bytes", "0"],
            &["chatbot-api", "--max-message-chars", "-3"],
            &["chatbot-api", "--store", "redis://x"],
            &["chatbot-api", "--db-pool-size", "0"],
            &[
                "chatbot-api",
                "--jwt-secret",
                "s",
                "--jwt-jwks-url",
                "http://h/jwks",
            ],
            &["chatbot-api", "--jwt-issuer", "https://id"],
            &["chatbot-api", "--jwt-audience", "chatbot"],
            &["chatbot-api", "--trusted-proxy", "10.0.0.0/33"],
        ] {
            assert!(Config::try_parse_from(args).is_err(), "{args:?}");
        }
    }

    #[test]
    fn model_flags() {
        let parse = |args: &[&str]| Config::try_parse_from(args).unwrap().model();
        assert_eq!(parse(&["chatbot-api"]), Ok(None));
        assert!(parse(&["chatbot-api", "--llm-url", "http://h/v1"]).is_err());
        let prompt = std::env::temp_dir().join(format!("prompt-{}", std::process::id()));
        std::fs::write(&prompt, "From a file.").unwrap();
        let config = parse(&[
            "chatbot-api",
            "--llm-url",
            "http://h/v1",
            "--llm-model",
            "m",
            "--llm-system-prompt",
            &format!("@{}", prompt.display()),
            "--llm-context",
            "3",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(config.system_prompt.as_deref(), Some("From a file."));
        assert_eq!((config.context, config.timeout.as_secs()), (3, 60));
        std::fs::remove_file(prompt).unwrap();
        let inline = parse(&[
            "chatbot-api",
            "--llm-url",
            "u",
            "--llm-model",
            "m",
            "--llm-system-prompt",
            "Be brief.",
        ]);
        assert_eq!(
            inline.unwrap().unwrap().system_prompt.as_deref(),
            Some("Be brief.")
        );
        assert!(
            parse(&[
                "chatbot-api",
                "--llm-url",
                "u",
                "--llm-model",
                "m",
                "--llm-system-prompt",
                "@/nonexistent/x"
            ])
            .is_err()
        );
    }

    #[test]
    fn jwt_flags() {
        let parse = |args: &[&str]| Config::try_parse_from(args).unwrap().jwt();
        assert!(parse(&["chatbot-api"]).unwrap().is_none());
        let settings = parse(&[
            "chatbot-api",
            "--jwt-jwks-url",
            "https://id.test/jwks",
            "--jwt-issuer",
            "https://id.test",
            "--jwt-admin-claim",
            "scope",
            "--jwt-jwks-cooldown",
            "3",
        ])
        .unwrap()
        .unwrap();
        assert!(
            matches!(settings.source, KeySource::Jwks(ref url) if url == "https://id.test/jwks")
        );
        assert_eq!(settings.issuer.as_deref(), Some("https://id.test"));
        assert_eq!(settings.audience, None);
        assert_eq!(
            (settings.admin_claim.as_str(), settings.admin_value.as_str()),
            ("scope", "admin")
        );
        assert_eq!(settings.jwks_cooldown.as_secs(), 3);
        assert!(parse(&["chatbot-api", "--jwt-public-key", "/nonexistent/key.pem"]).is_err());
    }

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        Config::command().debug_assert();
    }
}
