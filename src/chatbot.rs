//! The reply engine: a pure, synchronous keyword matcher.
//!
//! `chatbot_reply(message, history)` looks only at its arguments, so it can be
//! tested with plain tables and reused by every store backend.

use std::sync::{Arc, LazyLock};

use crate::models::ConversationEntry;

/// How many of a session's latest exchanges the engine is shown.
pub const CONTEXT_EXCHANGES: usize = 20;

/// Anything that answers a message given the session's earlier exchanges
/// (oldest first, at most [`CONTEXT_EXCHANGES`]). Stores call it at the
/// moment they append, so the history it sees is exactly what came before.
pub trait Replier: Send + Sync + 'static {
    fn reply(&self, message: &str, history: &[ConversationEntry]) -> Arc<str>;
}

/// One keyword rule: the message matches when it contains any keyword,
/// compared case-insensitively.
#[derive(Debug, Clone)]
pub struct Rule {
    keywords: Vec<String>,
    reply: Arc<str>,
}

impl Rule {
    /// A rule answering `reply` to any message containing one of `keywords`.
    pub fn new<K: AsRef<str>>(keywords: impl IntoIterator<Item = K>, reply: &str) -> Self {
        Self {
            keywords: keywords
                .into_iter()
                .map(|k| k.as_ref().to_lowercase())
                .collect(),
            reply: Arc::from(reply),
        }
    }

    fn matches(&self, lowered_message: &str) -> bool {
        self.keywords.iter().any(|k| lowered_message.contains(k))
    }
}

/// An ordered rule set: the first matching rule answers, otherwise the fallback.
///
/// Replies are `Arc<str>` so that every stored exchange shares its reply text
/// with the rule instead of holding a copy.
#[derive(Debug, Clone)]
pub struct Chatbot {
    rules: Vec<Rule>,
    fallback: Arc<str>,
}

/// The reply given to a message no rule matches.
pub const SEED_FALLBACK: &str = "Interesting! I'm still learning...";

impl Chatbot {
    /// A rule set from explicit rules and a fallback reply.
    pub fn new(rules: Vec<Rule>, fallback: &str) -> Self {
        Self {
            rules,
            fallback: Arc::from(fallback),
        }
    }

    /// The seed server's rules, whose replies clients already know by heart.
    pub fn seed() -> Self {
        Self::new(
            vec![
                Rule::new(["hello", "hey"], "Hi there! How can I help you today?"),
                Rule::new(
                    ["your name", "who are you"],
                    "I'm FastAPI Bot, your friendly assistant built with FastAPI!",
                ),
                Rule::new(
                    ["fastapi"],
                    "FastAPI is a modern, fast Python web framework for building APIs. It's awesome!",
                ),
            ],
            SEED_FALLBACK,
        )
    }

    /// The reply to `message`, given the session's earlier exchanges (oldest first).
    pub fn reply(&self, message: &str, _history: &[ConversationEntry]) -> Arc<str> {
        let lowered = message.to_lowercase();
        self.rules
            .iter()
            .find(|rule| rule.matches(&lowered))
            .map_or_else(|| self.fallback.clone(), |rule| rule.reply.clone())
    }
}

impl Replier for Chatbot {
    fn reply(&self, message: &str, history: &[ConversationEntry]) -> Arc<str> {
        Chatbot::reply(self, message, history)
    }
}

impl Default for Chatbot {
    fn default() -> Self {
        Self::seed()
    }
}

static SEED: LazyLock<Chatbot> = LazyLock::new(Chatbot::seed);

/// The seed's reply to `message`, given the session's earlier exchanges.
pub fn chatbot_reply(message: &str, history: &[ConversationEntry]) -> Arc<str> {
    SEED.reply(message, history)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_replies_come_out_exactly() {
        let cases = [
            ("Hello!", "Hi there! How can I help you today?"),
            ("hello", "Hi there! How can I help you today?"),
            ("HEY you", "Hi there! How can I help you today?"),
            (
                "What's your name?",
                "I'm FastAPI Bot, your friendly assistant built with FastAPI!",
            ),
            (
                "Tell me about FastAPI",
                "FastAPI is a modern, fast Python web framework for building APIs. It's awesome!",
            ),
            (
                "tell me about fastapi",
                "FastAPI is a modern, fast Python web framework for building APIs. It's awesome!",
            ),
            ("What's the weather?", SEED_FALLBACK),
            ("", SEED_FALLBACK),
            ("héllo wörld", SEED_FALLBACK),
        ];
        for (message, expected) in cases {
            assert_eq!(
                &*chatbot_reply(message, &[]),
                expected,
                "message {message:?}"
            );
        }
    }

    #[test]
    fn first_matching_rule_wins() {
        let reply = chatbot_reply("Hello! What's your name?", &[]);
        assert_eq!(&*reply, "Hi there! How can I help you today?");
    }

    #[test]
    fn matching_is_unicode_case_insensitive() {
        let bot = Chatbot::new(vec![Rule::new(["ÉTÉ"], "summer")], "no");
        assert_eq!(&*bot.reply("un bel été", &[]), "summer");
        assert_eq!(&*bot.reply("hiver", &[]), "no");
    }

    #[test]
    fn replies_are_shared_not_copied() {
        let bot = Chatbot::seed();
        let a = bot.reply("hello", &[]);
        let b = bot.reply("hello again", &[]);
        assert!(Arc::ptr_eq(&a, &b));
    }
}
