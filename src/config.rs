//! Command-line flags, each with an environment variable of the same meaning.

use clap::Parser;

use crate::models::Limits;
use crate::store::StoreKind;

/// A conversation-history chat server, wire-compatible with the FastAPI tutorial server.
#[derive(Debug, Clone, Parser)]
#[command(name = "chatbot-api", version, about, long_about = None)]
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

    /// Database connections per instance (SQLite and PostgreSQL).
    #[arg(long, env = "CHATBOT_DB_POOL_SIZE", default_value_t = 8,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub db_pool_size: u32,

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

    /// Longest accepted `user_message`, in characters; longer ones get a 422.
    #[arg(long, env = "CHATBOT_MAX_MESSAGE_CHARS", default_value_t = 4000,
          value_parser = clap::value_parser!(u64).range(1..=1 << 24))]
    pub max_message_chars: u64,
}

impl Config {
    /// The request limits these flags set.
    pub fn limits(&self) -> Limits {
        Limits {
            max_message_chars: usize::try_from(self.max_message_chars).unwrap_or(usize::MAX),
            max_body_bytes: usize::try_from(self.max_body_bytes).unwrap_or(usize::MAX),
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
        ] {
            assert!(Config::try_parse_from(args).is_err(), "{args:?}");
        }
    }

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        Config::command().debug_assert();
    }
}
