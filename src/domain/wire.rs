//! The seed's JSON bytes for exchanges, hand-written for the two hot
//! responses (`POST /chat` and a history page): written straight into one buffer, with text that needs no escaping
//! copied as is and text escaped once (bot replies, user names) copied from
//! its escaped form. The output is byte for byte what `serde_json` writes for
//! the same values (tested below).

use crate::domain::models::{ConversationEntry, Timestamp, TimestampText};

/// Whether `text` can be written between quotes as it is: no `"`, no `\`,
/// no control character. Branch-free over the bytes, so it vectorizes.
pub fn is_plain(text: &str) -> bool {
    !text.bytes().fold(false, |seen, b| {
        seen | (b < 0x20) | (b == b'"') | (b == b'\\')
    })
}

/// Appends `text` as a JSON string, quotes included.
pub fn push_str(buf: &mut Vec<u8>, text: &str) {
    if is_plain(text) {
        push_plain(buf, text);
    } else {
        // serde_json's own escaping for the rest; writing to a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *buf, text);
    }
}

/// Appends `text`, known to be plain, between quotes.
fn push_plain(buf: &mut Vec<u8>, text: &str) {
    buf.reserve(text.len() + 2);
    buf.push(b'"');
    buf.extend_from_slice(text.as_bytes());
    buf.push(b'"');
}

/// `text` as a JSON string, quotes included, for text written many times.
pub fn quoted(text: &str) -> Box<str> {
    let mut buf = Vec::with_capacity(text.len() + 2);
    push_str(&mut buf, text);
    String::from_utf8(buf)
        .expect("escaping keeps UTF-8")
        .into_boxed_str()
}

/// A string to write: as it is (escaped on the way out), known plain, or
/// already a JSON string with its quotes.
#[derive(Debug, Clone, Copy)]
pub enum Text<'a> {
    Raw(&'a str),
    Plain(&'a str),
    Quoted(&'a str),
}

impl<'a> Text<'a> {
    fn write(self, buf: &mut Vec<u8>) {
        match self {
            Text::Raw(text) => push_str(buf, text),
            Text::Plain(text) => push_plain(buf, text),
            Text::Quoted(json) => buf.extend_from_slice(json.as_bytes()),
        }
    }

    /// Writes the text's JSON form without its quotes.
    fn write_contents(self, buf: &mut Vec<u8>) {
        match self {
            Text::Plain(text) => buf.extend_from_slice(text.as_bytes()),
            Text::Quoted(json) => buf.extend_from_slice(&json.as_bytes()[1..json.len() - 1]),
            Text::Raw(text) if is_plain(text) => buf.extend_from_slice(text.as_bytes()),
            Text::Raw(text) => {
                let start = buf.len();
                push_str(buf, text);
                buf.pop();
                buf.remove(start);
            }
        }
    }

    fn as_str(self) -> &'a str {
        match self {
            Text::Raw(text) | Text::Plain(text) | Text::Quoted(text) => text,
        }
    }

    /// Whether both write the same bytes: the same string (the common case:
    /// one shared reply or name), or equal ones of the same kind.
    fn same(self, other: Text<'_>) -> bool {
        let (a, b) = (self.as_str(), other.as_str());
        (std::ptr::eq(a, b) || a == b)
            && std::mem::discriminant(&self) == std::mem::discriminant(&other)
    }
}

/// Writes a JSON array of history entries (`user_message`, `bot_reply`,
/// `user_name`, `timestamp`).
///
/// Consecutive entries mostly share their reply and user name, and often
/// their second: what lies between the message and the time
/// (`","bot_reply":…,"user_name":…,"timestamp":"`) is written once and
/// copied while it stays the same, and each second is formatted once.
pub struct HistoryWriter<'a> {
    buf: Vec<u8>,
    second: Option<(i64, TimestampText)>,
    middle: Vec<u8>,
    middle_of: Option<(Text<'a>, Text<'a>)>,
}

/// Bytes a history entry takes besides its strings' JSON forms (keys,
/// punctuation, the timestamp); a chat response takes a little more.
const ENTRY_OVERHEAD: usize = 80;

impl<'a> HistoryWriter<'a> {
    /// A writer for `entries` entries whose strings take `text_bytes` as
    /// JSON (quotes included): the buffer is allocated once.
    pub fn new(entries: usize, text_bytes: usize) -> Self {
        Self {
            buf: Vec::with_capacity(2 + entries * ENTRY_OVERHEAD + text_bytes),
            second: None,
            middle: Vec::new(),
            middle_of: None,
        }
    }

    /// Appends an entry, rewriting the reply and name part only when they
    /// differ from the previous entry's.
    pub fn entry(&mut self, message: Text<'_>, reply: Text<'a>, name: Text<'a>, timestamp: i64) {
        let same = self
            .middle_of
            .is_some_and(|(r, n)| r.same(reply) && n.same(name));
        if !same {
            self.reply_and_name(reply, name);
        }
        self.message(message, timestamp);
    }

    /// Sets the reply and user name of the entries that follow (a caller
    /// that knows when they change calls it only then).
    pub fn reply_and_name(&mut self, reply: Text<'a>, name: Text<'a>) {
        self.middle.clear();
        self.middle.extend_from_slice(b"\",\"bot_reply\":");
        reply.write(&mut self.middle);
        self.middle.extend_from_slice(b",\"user_name\":");
        name.write(&mut self.middle);
        self.middle.extend_from_slice(b",\"timestamp\":\"");
        self.middle_of = Some((reply, name));
    }

    /// Appends an entry with `message` and the current reply and user name.
    pub fn message(&mut self, message: Text<'_>, timestamp: i64) {
        let time = match self.second {
            Some((second, text)) if second == timestamp => text,
            _ => {
                let text = Timestamp(timestamp).text();
                self.second = Some((timestamp, text));
                text
            }
        };
        // Every entry starts with a comma; `finish` turns the first into `[`.
        let buf = &mut self.buf;
        buf.extend_from_slice(b",{\"user_message\":\"");
        message.write_contents(buf);
        buf.extend_from_slice(&self.middle);
        buf.extend_from_slice(time.as_bytes());
        buf.extend_from_slice(b"\"}");
    }

    /// Appends a stored entry, escaping its strings as needed.
    pub fn push(&mut self, entry: &'a ConversationEntry) {
        self.entry(
            Text::Raw(&entry.user_message),
            Text::Raw(&entry.bot_reply),
            Text::Raw(&entry.user_name),
            entry.timestamp,
        );
    }

    pub fn finish(mut self) -> Vec<u8> {
        match self.buf.first_mut() {
            Some(comma) => *comma = b'[',
            None => self.buf.push(b'['),
        }
        self.buf.push(b']');
        self.buf
    }
}

/// Writes a whole history: `[entry, …]`.
pub fn history(entries: &[ConversationEntry]) -> Vec<u8> {
    let text: usize = entries
        .iter()
        .map(|e| e.user_message.len() + e.bot_reply.len() + e.user_name.len() + 6)
        .sum();
    let mut writer = HistoryWriter::new(entries.len(), text);
    for entry in entries {
        writer.push(entry);
    }
    writer.finish()
}

/// The `POST /chat` answer, fields in the seed's order: `bot_reply`,
/// `user_message`, `user_name`, `session_id`, `timestamp`.
pub fn chat_response(entry: &ConversationEntry, session_id: &str) -> Vec<u8> {
    let mut buf = Vec::with_capacity(
        2 * ENTRY_OVERHEAD
            + entry.bot_reply.len()
            + entry.user_message.len()
            + entry.user_name.len()
            + session_id.len(),
    );
    buf.extend_from_slice(b"{\"bot_reply\":");
    push_str(&mut buf, &entry.bot_reply);
    buf.extend_from_slice(b",\"user_message\":");
    push_str(&mut buf, &entry.user_message);
    buf.extend_from_slice(b",\"user_name\":");
    push_str(&mut buf, &entry.user_name);
    buf.extend_from_slice(b",\"session_id\":");
    push_str(&mut buf, session_id);
    buf.extend_from_slice(b",\"timestamp\":\"");
    buf.extend_from_slice(Timestamp(entry.timestamp).text().as_bytes());
    buf.extend_from_slice(b"\"}");
    buf
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::domain::models::{SessionId, format_timestamp, now};

    const HOSTILE: &[&str] = &[
        "Hello!",
        "",
        "quote \" and backslash \\ and slash /",
        "new\nline\ttab\r\u{8}\u{c}",
        "\u{1}\u{1f}\u{7f} control",
        "caf\u{e9} \u{65e5}\u{672c} \u{1f600} \u{2028}\u{2029}",
        "</script><!--",
    ];

    fn entry(message: &str, reply: &str, name: &str, timestamp: i64) -> ConversationEntry {
        ConversationEntry {
            user_message: Arc::from(message),
            bot_reply: Arc::from(reply),
            user_name: Arc::from(name),
            timestamp,
        }
    }

    #[test]
    fn strings_are_escaped_as_serde_json_does() {
        for text in HOSTILE {
            let mut buf = Vec::new();
            push_str(&mut buf, text);
            assert_eq!(buf, serde_json::to_vec(text).unwrap(), "{text:?}");
            assert_eq!(&*quoted(text), serde_json::to_string(text).unwrap());
            assert_eq!(
                is_plain(text),
                serde_json::to_string(text).unwrap().len() == text.len() + 2
            );
        }
    }

    #[test]
    fn a_history_is_what_serde_json_writes() {
        let t = now();
        let entries: Vec<ConversationEntry> = HOSTILE
            .iter()
            .enumerate()
            .map(|(i, text)| {
                entry(
                    text,
                    HOSTILE[(i + 1) % HOSTILE.len()],
                    text,
                    t + i as i64 / 2,
                )
            })
            .collect();
        assert_eq!(history(&entries), serde_json::to_vec(&entries).unwrap());
        assert_eq!(history(&[]), b"[]");
        // Pre-escaped and known-plain forms give the same bytes.
        let mut writer = HistoryWriter::new(1, 0);
        writer.entry(
            Text::Quoted(&quoted("a\"b")),
            Text::Plain("Hi"),
            Text::Raw("Al\nice"),
            t,
        );
        assert_eq!(
            writer.finish(),
            serde_json::to_vec(&[entry("a\"b", "Hi", "Al\nice", t)]).unwrap()
        );
    }

    /// The seed's `ChatResponse`, fields in its order, as serde writes it.
    #[derive(serde::Serialize)]
    struct SeedResponse<'a> {
        bot_reply: &'a str,
        user_message: &'a str,
        user_name: &'a str,
        session_id: &'a str,
        timestamp: String,
    }

    #[test]
    fn a_chat_response_is_what_serde_json_writes() {
        for text in HOSTILE {
            let entry = entry(text, text, text, now());
            let id: String = text
                .chars()
                .filter(|c| !c.is_ascii_control() && *c != '/')
                .collect();
            let session = SessionId::parse(format!("s {id}")).unwrap();
            let expected = serde_json::to_vec(&SeedResponse {
                bot_reply: text,
                user_message: text,
                user_name: text,
                session_id: session.as_str(),
                timestamp: format_timestamp(entry.timestamp),
            })
            .unwrap();
            assert_eq!(chat_response(&entry, session.as_str()), expected);
        }
    }
}
