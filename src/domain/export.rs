//! Whole-conversation downloads: JSON lines, CSV (for spreadsheets) and Markdown.

use crate::domain::models::{ConversationEntry, format_timestamp};

/// A download format of `GET /chat/history/{id}/export`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ExportFormat {
    Jsonl,
    Csv,
    Markdown,
}

impl ExportFormat {
    /// The `format=` values, in the order error messages list them.
    pub const NAMES: &'static [&'static str] = &["jsonl", "csv", "markdown"];

    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "jsonl" => Some(Self::Jsonl),
            "csv" => Some(Self::Csv),
            "markdown" => Some(Self::Markdown),
            _ => None,
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            Self::Jsonl => "jsonl",
            Self::Csv => "csv",
            Self::Markdown => "md",
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Self::Jsonl => "application/x-ndjson",
            Self::Csv => "text/csv; charset=utf-8",
            Self::Markdown => "text/markdown; charset=utf-8",
        }
    }
}

/// The conversation in `format`.
pub fn export(format: ExportFormat, session: &str, entries: &[ConversationEntry]) -> Vec<u8> {
    match format {
        ExportFormat::Jsonl => jsonl(entries),
        ExportFormat::Csv => csv(entries),
        ExportFormat::Markdown => markdown(session, entries).into_bytes(),
    }
}

/// One history entry per line, in the history endpoint's shape.
fn jsonl(entries: &[ConversationEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * 128);
    for entry in entries {
        // Serializing owned strings into a Vec cannot fail.
        if serde_json::to_writer(&mut out, entry).is_ok() {
            out.push(b'\n');
        }
    }
    out
}

/// RFC 4180 CSV with a header row, behind a UTF-8 byte-order mark so that
/// spreadsheets read non-ASCII text correctly.
fn csv(entries: &[ConversationEntry]) -> Vec<u8> {
    let mut writer = csv::WriterBuilder::new()
        .terminator(csv::Terminator::CRLF)
        .from_writer(b"\xEF\xBB\xBF".to_vec());
    let mut rows = vec![vec![
        "user_message".to_owned(),
        "bot_reply".into(),
        "user_name".into(),
        "timestamp".into(),
    ]];
    rows.extend(entries.iter().map(|e| {
        vec![
            e.user_message.to_string(),
            e.bot_reply.to_string(),
            e.user_name.to_string(),
            format_timestamp(e.timestamp),
        ]
    }));
    for row in rows {
        // Writing into memory cannot fail.
        let _ = writer.write_record(&row);
    }
    writer.into_inner().unwrap_or_default()
}

/// A readable transcript.
fn markdown(session: &str, entries: &[ConversationEntry]) -> String {
    let mut out = format!("# Conversation `{session}`\n\n");
    for entry in entries {
        let quoted: Vec<String> = entry
            .user_message
            .lines()
            .map(|l| format!("> {l}"))
            .collect();
        out.push_str(&format!(
            "**{}** · {}\n\n{}\n\n**Bot**\n\n{}\n\n---\n\n",
            entry.user_name,
            format_timestamp(entry.timestamp),
            quoted.join("\n"),
            entry.bot_reply
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(message: &str) -> ConversationEntry {
        ConversationEntry {
            user_message: message.into(),
            bot_reply: "ok".into(),
            user_name: "Ann".into(),
            timestamp: 0,
        }
    }

    #[test]
    fn csv_quotes_commas_quotes_and_newlines() {
        let out = export(ExportFormat::Csv, "s", &[entry("a, \"b\"\nc")]);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with('\u{feff}'));
        assert!(text.contains("\"a, \"\"b\"\"\nc\",ok,Ann,"), "{text}");
    }

    #[test]
    fn names_round_trip() {
        for name in ExportFormat::NAMES {
            assert!(ExportFormat::from_name(name).is_some());
        }
        assert_eq!(ExportFormat::from_name("xml"), None);
    }
}
