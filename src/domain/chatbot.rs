//! The reply engine: a pure, synchronous keyword matcher.
//!
//! `chatbot_reply(message, history)` looks only at its arguments, so it can be
//! tested with plain tables and reused by every store backend.

use std::path::Path;
use std::sync::{Arc, LazyLock};

use serde_json::Value;

use crate::domain::models::ConversationEntry;

/// How many of a session's latest exchanges the engine is shown.
pub const CONTEXT_EXCHANGES: usize = 20;

/// Anything that answers a message given the session's earlier exchanges
/// (oldest first, at most [`CONTEXT_EXCHANGES`]). Stores call it at the
/// moment they append, so the history it sees is exactly what came before.
pub trait Replier: Send + Sync + 'static {
    fn reply(&self, message: &str, history: &dyn History) -> Arc<str>;

    /// The reply when the engine has one of its own for this message (a
    /// rule, an answer about the conversation); `None` when all it has is
    /// its fallback line. A model, if configured, answers those instead.
    fn known_reply(&self, message: &str, history: &dyn History) -> Option<Arc<str>> {
        Some(self.reply(message, history))
    }

    /// The reply and where it came from, for counting.
    fn reply_kind(&self, message: &str, history: &dyn History) -> (Arc<str>, ReplyKind) {
        (self.reply(message, history), ReplyKind::Other)
    }

    /// The rules' names and replies, and the fallback line, for analytics
    /// (empty for an engine without rules).
    fn catalog(&self) -> Catalog {
        Catalog::default()
    }
}

/// What a rule engine can answer: each rule's name (its first keyword) and
/// reply, and the fallback line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Catalog {
    pub rules: Vec<(Arc<str>, Arc<str>)>,
    pub fallback: Option<Arc<str>>,
}

/// Where a reply came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyKind {
    /// A keyword rule, named by its first keyword.
    Rule(Arc<str>),
    /// An answer about the conversation ("what did I just say?").
    Conversation,
    /// The fallback line: no rule matched.
    Fallback,
    /// A reply engine that does not say.
    Other,
}

/// The earlier exchanges a reply may look at, oldest first, read in place:
/// each store shows its own stored form without building entries.
pub trait History {
    fn len(&self) -> usize;
    /// The user's message of exchange `i` (`i < len()`).
    fn user_message(&self, i: usize) -> &str;
    /// The user name of exchange `i` (`i < len()`).
    fn user_name(&self, i: usize) -> &str;

    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl History for [ConversationEntry] {
    fn len(&self) -> usize {
        <[ConversationEntry]>::len(self)
    }

    fn user_message(&self, i: usize) -> &str {
        &self[i].user_message
    }

    fn user_name(&self, i: usize) -> &str {
        &self[i].user_name
    }
}

impl<H: History + ?Sized> History for &H {
    fn len(&self) -> usize {
        (**self).len()
    }

    fn user_message(&self, i: usize) -> &str {
        (**self).user_message(i)
    }

    fn user_name(&self, i: usize) -> &str {
        (**self).user_name(i)
    }
}

/// One keyword rule: the message matches when it contains any keyword,
/// compared case-insensitively.
#[derive(Debug, Clone)]
pub struct Rule {
    keywords: Vec<String>,
    reply: Arc<str>,
    /// Its first keyword, as counted in metrics.
    name: Arc<str>,
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
            name: Arc::from(""),
        }
        .named()
    }

    fn named(mut self) -> Self {
        self.name = Arc::from(self.keywords.first().map_or("", String::as_str));
        self
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

    /// Loads rules from a JSON file:
    /// `{"rules": [{"any": ["price", "pricing"], "reply": "…"}], "fallback": "…"}`.
    /// `fallback` is optional (the seed's is used).
    pub fn from_rules_file(path: &Path) -> Result<Self, RulesError> {
        let fail = |what: String| RulesError {
            path: path.display().to_string(),
            what,
        };
        let text =
            std::fs::read_to_string(path).map_err(|e| fail(format!("cannot read it: {e}")))?;
        let document: Value =
            serde_json::from_str(&text).map_err(|e| fail(format!("not valid JSON: {e}")))?;
        let rules = document
            .get("rules")
            .and_then(Value::as_array)
            .ok_or_else(|| fail("needs a \"rules\" array".into()))?;
        let fallback = match document.get("fallback") {
            None => SEED_FALLBACK,
            Some(Value::String(text)) if !text.is_empty() => text.as_str(),
            Some(_) => return Err(fail("\"fallback\" must be a non-empty string".into())),
        };
        let parsed = rules
            .iter()
            .enumerate()
            .map(|(index, rule)| {
                parse_rule(rule).map_err(|what| fail(format!("rule {index}: {what}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self::new(parsed, fallback))
    }

    /// The reply to `message`, given the session's earlier exchanges (oldest
    /// first): the context-aware answers first, then the keyword rules; a
    /// question asked before is answered with a note that says so.
    pub fn reply(&self, message: &str, history: &[ConversationEntry]) -> Arc<str> {
        self.answer(message, &history)
    }

    fn answer(&self, message: &str, history: &dyn History) -> Arc<str> {
        self.answer_with_kind(message, history).0
    }

    /// The reply: `Ok` from a rule or the conversation, `Err` the fallback.
    fn answer_known(&self, message: &str, history: &dyn History) -> Result<Arc<str>, Arc<str>> {
        match self.answer_with_kind(message, history) {
            (answer, ReplyKind::Fallback) => Err(answer),
            (answer, _) => Ok(answer),
        }
    }

    fn answer_with_kind(&self, message: &str, history: &dyn History) -> (Arc<str>, ReplyKind) {
        let lowered = message.to_lowercase();
        // Most messages are answered without normalizing them.
        let may_ask = lowered.contains(['\'', '\u{2019}'])
            || ASKING_WORDS.iter().any(|w| lowered.contains(w));
        let normalized = (may_ask || message.contains('?')).then(|| normalize(message));
        if let Some(normalized) = normalized.as_deref().filter(|_| may_ask)
            && let Some(answer) = about_the_conversation(normalized, history)
        {
            return (answer, ReplyKind::Conversation);
        }
        let rule = self.rules.iter().find(|rule| rule.matches(&lowered));
        let answer = rule.map_or_else(|| self.fallback.clone(), |rule| rule.reply.clone());
        let asked_before = message.contains('?')
            && normalized.as_deref().is_some_and(|normalized| {
                (0..history.len()).any(|i| normalize(history.user_message(i)) == normalized)
            });
        let answer = if asked_before {
            format!(
                "You asked me about \"{}\" earlier... {answer}",
                message.trim()
            )
            .into()
        } else {
            answer
        };
        let kind = match rule {
            Some(rule) => ReplyKind::Rule(rule.name.clone()),
            None => ReplyKind::Fallback,
        };
        (answer, kind)
    }
}

/// "What did I just say?" and "what is my name?", answered from `history`.
fn about_the_conversation(normalized: &str, history: &dyn History) -> Option<Arc<str>> {
    if ASKS_LAST_MESSAGE.iter().any(|p| normalized.contains(p)) {
        // An exchange whose user side was removed (or an imported reply
        // alone) has an empty message: the user said nothing there.
        let last = (0..history.len())
            .rev()
            .map(|i| history.user_message(i))
            .find(|said| !said.is_empty());
        return Some(match last {
            Some(last) => format!("You said: \"{last}\"").into(),
            None => "You haven't said anything yet in this conversation.".into(),
        });
    }
    if ASKS_OWN_NAME.iter().any(|p| normalized.contains(p)) {
        let known = (0..history.len())
            .rev()
            .map(|i| history.user_name(i))
            .find(|n| *n != DEFAULT_USER_NAME);
        return Some(match known {
            Some(name) => format!("Your name is {name}.").into(),
            None => "I don't know your name yet. Send it as user_name and I'll remember it.".into(),
        });
    }
    None
}

/// The user name a request gets when it gives none.
const DEFAULT_USER_NAME: &str = "User";

/// Every way of asking about the conversation contains one of these words,
/// so a message without them (nor an apostrophe, which [`normalize`] drops)
/// cannot be asking.
const ASKING_WORDS: &[&str] = &["what", "who", "know"];

/// Ways of asking for one's previous message (after [`normalize`]).
const ASKS_LAST_MESSAGE: &[&str] = &[
    "what did i just say",
    "what did i say",
    "what was my last message",
    "what was my previous message",
    "repeat what i said",
    "what did i write",
];

/// Ways of asking for one's own name (after [`normalize`]).
const ASKS_OWN_NAME: &[&str] = &[
    "what is my name",
    "whats my name",
    "do you know my name",
    "who am i",
];

/// Lower case, apostrophes dropped, other punctuation as spaces, spaces collapsed.
fn normalize(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for c in message.chars().flat_map(char::to_lowercase) {
        if c == '\'' || c == '\u{2019}' {
            continue;
        }
        let c = if c.is_alphanumeric() { c } else { ' ' };
        if c != ' ' || !out.ends_with(' ') {
            out.push(c);
        }
    }
    out.trim().to_owned()
}

fn parse_rule(rule: &Value) -> Result<Rule, String> {
    let any = rule.get("any").ok_or("\"any\" is missing")?;
    let keywords = any
        .as_array()
        .ok_or("\"any\" must be an array of strings")?;
    if keywords.is_empty() {
        return Err("\"any\" is empty".into());
    }
    let mut words = Vec::with_capacity(keywords.len());
    for (i, keyword) in keywords.iter().enumerate() {
        match keyword.as_str() {
            Some(word) if !word.trim().is_empty() => words.push(word),
            Some(_) => return Err(format!("keyword {i} is empty")),
            None => return Err(format!("keyword {i} is not a string")),
        }
    }
    let reply = rule.get("reply").ok_or("\"reply\" is missing")?;
    let reply = reply
        .as_str()
        .filter(|r| !r.is_empty())
        .ok_or("\"reply\" must be a non-empty string")?;
    Ok(Rule::new(words, reply))
}

/// Why a rules file was refused: one line naming the file and the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("rules file {path}: {what}")]
pub struct RulesError {
    pub path: String,
    pub what: String,
}

impl Replier for Chatbot {
    fn reply(&self, message: &str, history: &dyn History) -> Arc<str> {
        self.answer(message, history)
    }

    fn known_reply(&self, message: &str, history: &dyn History) -> Option<Arc<str>> {
        self.answer_known(message, history).ok()
    }

    fn reply_kind(&self, message: &str, history: &dyn History) -> (Arc<str>, ReplyKind) {
        self.answer_with_kind(message, history)
    }

    fn catalog(&self) -> Catalog {
        Catalog {
            rules: self
                .rules
                .iter()
                .map(|rule| (rule.name.clone(), rule.reply.clone()))
                .collect(),
            fallback: Some(self.fallback.clone()),
        }
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
    fn every_question_about_the_conversation_has_an_asking_word() {
        for question in ASKS_LAST_MESSAGE.iter().chain(ASKS_OWN_NAME) {
            assert!(
                ASKING_WORDS.iter().any(|w| question.contains(w)),
                "{question}"
            );
        }
        // Apostrophes inside a word still reach the normalized check.
        assert_eq!(
            &*chatbot_reply("Wh'at did I say?", &[said("x", "U")]),
            "You said: \"x\""
        );
    }

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

    fn said(message: &str, user: &str) -> ConversationEntry {
        ConversationEntry {
            user_message: message.into(),
            bot_reply: "…".into(),
            user_name: user.into(),
            timestamp: 0,
        }
    }

    #[test]
    fn what_did_i_just_say() {
        let history = [said("first", "Ann"), said("I like tea", "Ann")];
        for question in [
            "What did I just say?",
            "what did i say",
            "WHAT WAS MY LAST MESSAGE??",
            "Repeat what I said",
        ] {
            assert_eq!(
                &*chatbot_reply(question, &history),
                "You said: \"I like tea\"",
                "{question}"
            );
        }
        assert_eq!(
            &*chatbot_reply("What did I just say?", &[]),
            "You haven't said anything yet in this conversation."
        );
        let gaps = [said("I like tea", "Ann"), said("", "User")];
        assert_eq!(
            &*chatbot_reply("What did I just say?", &gaps),
            "You said: \"I like tea\""
        );
        assert_eq!(
            &*chatbot_reply("What did I just say?", &gaps[1..]),
            "You haven't said anything yet in this conversation."
        );
    }

    #[test]
    fn what_is_my_name() {
        let history = [said("hi", "Zoë"), said("hello", "User")];
        for question in [
            "What is my name?",
            "what's my name",
            "Whats my name",
            "Who am I?",
            "Do you know my name?",
        ] {
            assert_eq!(
                &*chatbot_reply(question, &history),
                "Your name is Zoë.",
                "{question}"
            );
        }
        assert!(
            chatbot_reply("What's my name?", &[said("hi", "User")])
                .starts_with("I don't know your name")
        );
        // "What's your name?" is still the seed's question about the bot.
        assert_eq!(
            &*chatbot_reply("What's your name?", &history),
            "I'm FastAPI Bot, your friendly assistant built with FastAPI!"
        );
    }

    #[test]
    fn a_question_asked_twice_is_noticed() {
        let history = [said("What's your name?", "Ann"), said("ok", "Ann")];
        assert_eq!(
            &*chatbot_reply("what's your name?", &history),
            "You asked me about \"what's your name?\" earlier... \
             I'm FastAPI Bot, your friendly assistant built with FastAPI!"
        );
        // Only questions; a greeting repeated is just a greeting.
        let history = [said("Hello!", "Ann")];
        assert_eq!(
            &*chatbot_reply("Hello!", &history),
            "Hi there! How can I help you today?"
        );
    }

    fn rules_file(text: &str) -> (tempfile::NamedTempFile, Result<Chatbot, RulesError>) {
        use std::io::Write;
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(text.as_bytes()).unwrap();
        let result = Chatbot::from_rules_file(file.path());
        (file, result)
    }

    #[test]
    fn rules_files_load_in_order_with_their_fallback() {
        let (_file, bot) = rules_file(
            r#"{"rules":[{"any":["price","pricing"],"reply":"Plans start at five euros."},
                         {"any":["PRICE list"],"reply":"never reached"}],"fallback":"Ask me about prices."}"#,
        );
        let bot = bot.unwrap();
        assert_eq!(
            &*bot.reply("What is the Pricing", &[]),
            "Plans start at five euros."
        );
        assert_eq!(
            &*bot.reply("price list please", &[]),
            "Plans start at five euros."
        );
        assert_eq!(&*bot.reply("Hello!", &[]), "Ask me about prices.");
        // The context-aware answers still apply.
        assert_eq!(
            &*bot.reply("What did I just say?", &[said("x", "U")]),
            "You said: \"x\""
        );
    }

    #[test]
    fn broken_rules_files_name_the_file_the_rule_and_the_problem() {
        let cases = [
            ("not json", "not valid JSON"),
            ("{}", "needs a \"rules\" array"),
            (r#"{"rules":[{"reply":"x"}]}"#, "rule 0: \"any\" is missing"),
            (
                r#"{"rules":[{"any":["a"],"reply":"x"},{"any":["b"]}]}"#,
                "rule 1: \"reply\" is missing",
            ),
            (
                r#"{"rules":[{"any":["a",""],"reply":"x"}]}"#,
                "rule 0: keyword 1 is empty",
            ),
            (
                r#"{"rules":[{"any":[],"reply":"x"}]}"#,
                "rule 0: \"any\" is empty",
            ),
            (
                r#"{"rules":[{"any":[3],"reply":"x"}]}"#,
                "rule 0: keyword 0 is not a string",
            ),
            (
                r#"{"rules":[{"any":["a"],"reply":""}]}"#,
                "rule 0: \"reply\" must be a non-empty string",
            ),
            (
                r#"{"rules":[],"fallback":7}"#,
                "\"fallback\" must be a non-empty string",
            ),
        ];
        for (text, expected) in cases {
            let (file, result) = rules_file(text);
            let message = result.unwrap_err().to_string();
            assert!(
                message.contains(&file.path().display().to_string()),
                "{message}"
            );
            assert!(message.contains(expected), "{text}: {message}");
            assert_eq!(message.lines().count(), 1);
        }
        let missing = Chatbot::from_rules_file(Path::new("/nonexistent/rules.json")).unwrap_err();
        assert!(
            missing
                .to_string()
                .starts_with("rules file /nonexistent/rules.json: cannot read it")
        );
    }

    #[test]
    fn replies_are_shared_not_copied() {
        let bot = Chatbot::seed();
        let a = bot.reply("hello", &[]);
        let b = bot.reply("hello again", &[]);
        assert!(Arc::ptr_eq(&a, &b));
    }
}
