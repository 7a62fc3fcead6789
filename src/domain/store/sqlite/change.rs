//! Conversation writes other than answered messages (create, metadata,
//! import, edit), each one transaction on the writer's connection, and the
//! reads of a whole conversation with its exchange ids.

use std::sync::Arc;

use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};

use crate::domain::models::ConversationEntry;
use crate::domain::store::{
    At, Caps, Change, Changed, Conversation, Edited, Numbered, StoreError, metadata_from_json,
    metadata_json,
};

/// Adds one exchange to a session's counters and returns its id.
const COUNT_EXCHANGE: &str = "\
    UPDATE sessions SET message_count = message_count + 1, next_seq = next_seq + 1, \
    first_at = CASE WHEN message_count = 0 THEN ?2 ELSE first_at END, last_at = ?2 \
    WHERE id = ?1 RETURNING next_seq";
const INSERT_EXCHANGE: &str = "\
    INSERT INTO exchanges \
    (session_ref, seq, user_message, bot_reply, user_name, created_at) \
    VALUES (?1, ?2, ?3, ?4, ?5, ?6)";
const EXCHANGE_COLUMNS: &str = "seq, user_message, bot_reply, user_name, created_at";

/// Applies `change` to `session` in one transaction.
pub(super) fn apply(
    conn: &mut Connection,
    caps: Caps,
    session: &str,
    change: Change,
) -> Result<Changed, StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let row: Option<(i64, i64)> = tx
        .prepare_cached("SELECT id, message_count FROM sessions WHERE session_id = ?1")?
        .query_row([session], |row| Ok((row.get(0)?, row.get(1)?)))
        .optional()?;
    let changed = match (change, row) {
        (
            Change::Create {
                created_at,
                metadata,
                exchanges,
            },
            None,
        ) => {
            if caps.max_sessions.is_some() {
                let total: i64 = tx.query_row("SELECT count(*) FROM sessions", [], |r| r.get(0))?;
                caps.check_new_session(total as usize)?;
            }
            caps.check_room(0, exchanges.len())?;
            let id: i64 = tx
                .prepare_cached(
                    "INSERT INTO sessions \
                     (session_id, message_count, first_at, last_at, next_seq, created_at, metadata) \
                     VALUES (?1, 0, ?2, ?2, 0, ?2, ?3) RETURNING id",
                )?
                .query_row(
                    params![session, created_at, metadata_json(&metadata)],
                    |r| r.get(0),
                )?;
            insert(&tx, id, &exchanges)?;
            Changed::Created(true)
        }
        (Change::Create { .. }, Some(_)) => Changed::Created(false),
        (Change::SetMetadata(_), None) => Changed::Metadata(false),
        (Change::SetMetadata(metadata), Some((id, _))) => {
            tx.prepare_cached(
                "UPDATE sessions SET metadata = ?2, created_at = coalesce(created_at, first_at) \
                 WHERE id = ?1",
            )?
            .execute(params![id, metadata_json(&metadata)])?;
            Changed::Metadata(true)
        }
        (Change::Import(_), None) => Changed::Imported(None),
        (Change::Import(exchanges), Some((id, count))) => {
            caps.check_room(count as usize, exchanges.len())?;
            Changed::Imported(Some(insert(&tx, id, &exchanges)?))
        }
        (Change::Edit { .. }, None) => Changed::Edited(None),
        (Change::Edit { at, edit }, Some((id, _))) => {
            let found = match at {
                At::Seq(seq) => tx
                    .prepare_cached(&format!(
                        "SELECT {EXCHANGE_COLUMNS} FROM exchanges WHERE session_ref = ?1 AND seq = ?2"
                    ))?
                    .query_row(params![id, seq as i64], numbered)
                    .optional()?,
                At::Position(n) => tx
                    .prepare_cached(&format!(
                        "SELECT {EXCHANGE_COLUMNS} FROM exchanges WHERE session_ref = ?1 \
                         ORDER BY seq LIMIT 1 OFFSET ?2"
                    ))?
                    .query_row(params![id, n as i64], numbered)
                    .optional()?,
            };
            match found {
                None => Changed::Edited(None),
                Some(old) => Changed::Edited(Some(match edit.apply(&old.entry) {
                    Some(entry) => {
                        tx.prepare_cached(
                            "UPDATE exchanges SET user_message = ?3, bot_reply = ?4 \
                             WHERE session_ref = ?1 AND seq = ?2",
                        )?
                        .execute(params![
                            id,
                            old.seq as i64,
                            &*entry.user_message,
                            &*entry.bot_reply,
                        ])?;
                        Edited::Kept(Numbered {
                            seq: old.seq,
                            entry,
                        })
                    }
                    None => {
                        remove(&tx, id, old.seq)?;
                        Edited::Removed(old.seq)
                    }
                })),
            }
        }
    };
    tx.commit()?;
    Ok(changed)
}

/// Appends `exchanges` as given; returns their ids.
fn insert(
    tx: &Transaction<'_>,
    session_ref: i64,
    exchanges: &[ConversationEntry],
) -> Result<Vec<u64>, StoreError> {
    let mut count = tx.prepare_cached(COUNT_EXCHANGE)?;
    let mut insert = tx.prepare_cached(INSERT_EXCHANGE)?;
    let mut ids = Vec::with_capacity(exchanges.len());
    for entry in exchanges {
        let seq: i64 = count.query_row(params![session_ref, entry.timestamp], |r| r.get(0))?;
        insert.execute(params![
            session_ref,
            seq,
            &*entry.user_message,
            &*entry.bot_reply,
            &*entry.user_name,
            entry.timestamp,
        ])?;
        ids.push(seq as u64);
    }
    Ok(ids)
}

/// Removes one exchange; a seed session left empty goes with it.
fn remove(tx: &Transaction<'_>, session_ref: i64, seq: u64) -> Result<(), StoreError> {
    tx.prepare_cached("DELETE FROM exchanges WHERE session_ref = ?1 AND seq = ?2")?
        .execute(params![session_ref, seq as i64])?;
    tx.prepare_cached(
        "UPDATE sessions SET message_count = message_count - 1, \
         first_at = coalesce((SELECT min(created_at) FROM exchanges WHERE session_ref = ?1), first_at), \
         last_at = coalesce((SELECT max(created_at) FROM exchanges WHERE session_ref = ?1), last_at) \
         WHERE id = ?1",
    )?
    .execute([session_ref])?;
    tx.prepare_cached(
        "DELETE FROM sessions WHERE id = ?1 AND message_count = 0 AND metadata IS NULL",
    )?
    .execute([session_ref])?;
    Ok(())
}

fn numbered(row: &rusqlite::Row<'_>) -> rusqlite::Result<Numbered> {
    Ok(Numbered {
        seq: row.get::<_, i64>(0)? as u64,
        entry: ConversationEntry {
            user_message: Arc::from(row.get_ref(1)?.as_str()?),
            bot_reply: Arc::from(row.get_ref(2)?.as_str()?),
            user_name: Arc::from(row.get_ref(3)?.as_str()?),
            timestamp: row.get(4)?,
        },
    })
}

/// The conversation from the file, with its exchanges if asked.
pub(super) fn read(
    conn: &Connection,
    session: &str,
    exchanges: bool,
) -> Result<Option<Conversation>, StoreError> {
    let row: Option<(i64, i64, Option<String>)> = conn
        .prepare_cached(
            "SELECT id, coalesce(created_at, first_at), metadata FROM sessions \
             WHERE session_id = ?1",
        )?
        .query_row([session], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()?;
    let Some((id, created_at, metadata)) = row else {
        return Ok(None);
    };
    let exchanges = if exchanges {
        conn.prepare_cached(&format!(
            "SELECT {EXCHANGE_COLUMNS} FROM exchanges WHERE session_ref = ?1 ORDER BY seq"
        ))?
        .query_map([id], numbered)?
        .collect::<Result<_, _>>()?
    } else {
        Vec::new()
    };
    Ok(Some(Conversation {
        created_at,
        metadata: metadata_from_json(metadata.as_deref()),
        exchanges,
    }))
}
