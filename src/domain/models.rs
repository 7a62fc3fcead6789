//! The domain's values: stored exchanges and what is read about sessions,
//! the seed's timestamp text, and session ids with the rules they obey.
//! How the HTTP layer reports a broken rule is its own business
//! (`http::validate`).

use std::sync::Arc;

use chrono::{Local, TimeZone};
use serde::ser::{Serialize, SerializeStruct, Serializer};

/// One stored exchange, in its compact form.
///
/// The reply is shared with the rule that produced it and the user name with
/// the session's previous exchange; the timestamp is Unix seconds, formatted
/// only when written out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationEntry {
    pub user_message: Arc<str>,
    pub bot_reply: Arc<str>,
    pub user_name: Arc<str>,
    pub timestamp: i64,
}

impl Serialize for ConversationEntry {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("ConversationEntry", 4)?;
        s.serialize_field("user_message", &*self.user_message)?;
        s.serialize_field("bot_reply", &*self.bot_reply)?;
        s.serialize_field("user_name", &*self.user_name)?;
        s.serialize_field("timestamp", &Timestamp(self.timestamp))?;
        s.end()
    }
}

/// A session's size and time span. Serializes as an item of
/// `GET /chat/sessions`; [`SessionStats`] gives the stats shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionSummary {
    pub session_id: String,
    pub total_messages: usize,
    /// Unix seconds of the first and the last exchange.
    pub first_at: i64,
    pub last_at: i64,
}

impl Serialize for SessionSummary {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("SessionSummary", 4)?;
        s.serialize_field("session_id", &self.session_id)?;
        s.serialize_field("total_messages", &self.total_messages)?;
        s.serialize_field("first_message_time", &Timestamp(self.first_at))?;
        s.serialize_field("last_message_time", &Timestamp(self.last_at))?;
        s.end()
    }
}

/// `GET /chat/history/{id}/stats`: the seed's debug tip, made real.
#[derive(Debug)]
pub struct SessionStats(pub SessionSummary);

impl Serialize for SessionStats {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("SessionStats", 3)?;
        s.serialize_field("total_messages", &self.0.total_messages)?;
        s.serialize_field("first_message_time", &Timestamp(self.0.first_at))?;
        s.serialize_field("last_message_time", &Timestamp(self.0.last_at))?;
        s.end()
    }
}

/// An exchange found by a search, with the session it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub session_id: String,
    pub entry: ConversationEntry,
}

impl Serialize for Found {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut s = serializer.serialize_struct("Found", 5)?;
        s.serialize_field("session_id", &self.session_id)?;
        s.serialize_field("user_message", &*self.entry.user_message)?;
        s.serialize_field("bot_reply", &*self.entry.bot_reply)?;
        s.serialize_field("user_name", &*self.entry.user_name)?;
        s.serialize_field("timestamp", &Timestamp(self.entry.timestamp))?;
        s.end()
    }
}

/// Server-local time as the seed writes it: `%Y-%m-%d %H:%M:%S`.
pub fn format_timestamp(unix_seconds: i64) -> String {
    Timestamp(unix_seconds).text().to_string()
}

/// A Unix time that serializes as the seed's text, formatted once per second
/// per thread: a history's exchanges mostly share a few seconds, and asking
/// the time zone for every one of them dominated large reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timestamp(pub i64);

/// Slots of the per-thread cache of formatted seconds.
const TIMESTAMP_SLOTS: usize = 64;
const TIMESTAMP_LEN: usize = 19;

thread_local! {
    static FORMATTED: std::cell::RefCell<[(i64, [u8; TIMESTAMP_LEN]); TIMESTAMP_SLOTS]> =
        const { std::cell::RefCell::new([(i64::MIN, [0; TIMESTAMP_LEN]); TIMESTAMP_SLOTS]) };
}

impl Timestamp {
    fn bytes(self) -> [u8; TIMESTAMP_LEN] {
        let slot = self.0.rem_euclid(TIMESTAMP_SLOTS as i64) as usize;
        FORMATTED.with(|cache| {
            let mut cache = cache.borrow_mut();
            if cache[slot].0 != self.0 {
                let mut text = [b'?'; TIMESTAMP_LEN];
                if let Some(t) = Local.timestamp_opt(self.0, 0).earliest() {
                    let formatted = t.format("%Y-%m-%d %H:%M:%S").to_string();
                    if formatted.len() == TIMESTAMP_LEN {
                        text.copy_from_slice(formatted.as_bytes());
                    }
                }
                cache[slot] = (self.0, text);
            }
            cache[slot].1
        })
    }

    /// The formatted text, e.g. `2025-11-09 19:55:43`.
    pub fn text(self) -> TimestampText {
        TimestampText(self.bytes())
    }
}

/// Formatted timestamp on the stack.
#[derive(Debug, Clone, Copy)]
pub struct TimestampText([u8; TIMESTAMP_LEN]);

impl TimestampText {
    /// The text's bytes, without a UTF-8 check.
    pub fn as_bytes(&self) -> &[u8; TIMESTAMP_LEN] {
        &self.0
    }
}

impl std::ops::Deref for TimestampText {
    type Target = str;
    fn deref(&self) -> &str {
        // Only ASCII digits, dashes, colons, a space or '?' are ever stored.
        std::str::from_utf8(&self.0).unwrap_or("")
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text())
    }
}

/// Unix seconds as RFC 3339 in UTC (`2026-12-06T09:30:00Z`).
pub fn format_rfc3339(at: i64) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp(at, 0)
        .map_or_else(String::new, |t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
}

/// The current time as Unix seconds.
pub fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// The most characters a user name may have.
pub const MAX_USER_NAME_CHARS: usize = 100;
/// The most characters a session id may have.
pub const MAX_SESSION_ID_CHARS: usize = 128;
/// The pattern a session id must match, as pydantic reports it.
pub const SESSION_ID_PATTERN: &str = r"^[^/\x00-\x1f\x7f]+$";
/// The pattern messages and names must match: no NUL, which PostgreSQL
/// cannot store in text (ours; the same on every backend).
pub const TEXT_PATTERN: &str = r"^[^\x00]*$";

/// A session id that passed the contract's rules: 1 to 128 characters, no
/// `/`, no control character.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SessionId(pub(crate) String);

impl SessionId {
    /// Checks `value` against the session id rules.
    pub fn parse(value: String) -> Result<Self, String> {
        if Self::is_valid(&value) {
            Ok(Self(value))
        } else {
            Err(value)
        }
    }

    /// Whether `value` obeys the session id rules: 1 to 128 characters, no
    /// `/`, no control character.
    pub fn is_valid(value: &str) -> bool {
        check_string(value, 1, MAX_SESSION_ID_CHARS, Some(could_be_session_id)).is_none()
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A store key built by `auth::Owner::scope` from an id that passed
    /// [`SessionId::parse`]: the owner's prefix, then that id.
    pub fn from_store_key(key: String) -> Self {
        Self(key)
    }
}

impl AsRef<str> for SessionId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// Whether `value`'s characters could be a session id's: no `/`, no
/// control character (lengths aside).
pub fn could_be_session_id(value: &str) -> bool {
    !value.chars().any(|c| c == '/' || c.is_ascii_control())
}

/// Whether a message or name obeys [`TEXT_PATTERN`].
pub fn text_allowed(value: &str) -> bool {
    !value.contains('\0')
}

/// How a string broke its rule, checked in pydantic's order.
pub enum Violation {
    TooShort(usize),
    TooLong(usize),
    Pattern,
}

/// Checks a string's length in characters (code points) and its characters.
pub fn check_string(
    value: &str,
    min: usize,
    max: usize,
    allowed: Option<fn(&str) -> bool>,
) -> Option<Violation> {
    // pydantic counts characters (code points), not bytes; checks run in this order.
    let chars = value.chars().count();
    if chars < min {
        Some(Violation::TooShort(min))
    } else if chars > max {
        Some(Violation::TooLong(max))
    } else if allowed.is_some_and(|ok| !ok(value)) {
        Some(Violation::Pattern)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_timestamps_match_a_fresh_format() {
        let now = now();
        for secs in [
            now,
            now - 1,
            now + 64,
            now,
            0,
            1_700_000_000,
            now - 86_400 * 200,
        ] {
            let fresh = Local
                .timestamp_opt(secs, 0)
                .unwrap()
                .format("%Y-%m-%d %H:%M:%S")
                .to_string();
            assert_eq!(&*Timestamp(secs).text(), fresh, "{secs}");
            assert_eq!(
                serde_json::to_string(&Timestamp(secs)).unwrap(),
                format!("\"{fresh}\"")
            );
        }
    }

    #[test]
    fn timestamp_has_the_seed_format() {
        let text = format_timestamp(now());
        assert_eq!(text.len(), 19);
        assert!(chrono::NaiveDateTime::parse_from_str(&text, "%Y-%m-%d %H:%M:%S").is_ok());
    }
}
