//! Conversation writes other than answered messages (create, metadata,
//! import, edit), each one transaction that locks the session's row first,
//! and the read of a whole conversation with its exchange ids.

use sqlx::{FromRow, PgPool, Postgres, Transaction};

use super::{ExchangeRow, unavailable};
use crate::domain::models::ConversationEntry;
use crate::domain::store::{
    At, Caps, Change, Changed, Conversation, Edited, Numbered, StoreError, metadata_from_json,
    metadata_json, search_text,
};

const EXCHANGE_COLUMNS: &str = "seq, user_message, bot_reply, user_name, created_at";

#[derive(FromRow)]
struct NumberedRow {
    seq: i64,
    #[sqlx(flatten)]
    exchange: ExchangeRow,
}

impl From<NumberedRow> for Numbered {
    fn from(row: NumberedRow) -> Self {
        Self {
            seq: row.seq as u64,
            entry: row.exchange.into(),
        }
    }
}

/// Applies `change` to `session` in one transaction.
pub(super) async fn apply(
    pool: &PgPool,
    caps: Caps,
    session: &str,
    change: Change,
) -> Result<Changed, StoreError> {
    let mut tx = pool.begin().await.map_err(unavailable)?;
    let changed = apply_in(&mut tx, caps, session, change).await?;
    tx.commit().await.map_err(unavailable)?;
    Ok(changed)
}

async fn apply_in(
    tx: &mut Transaction<'_, Postgres>,
    caps: Caps,
    session: &str,
    change: Change,
) -> Result<Changed, StoreError> {
    let row: Option<(i64, i64)> =
        sqlx::query_as("SELECT id, message_count FROM sessions WHERE session_id = $1 FOR UPDATE")
            .bind(session)
            .fetch_optional(&mut **tx)
            .await
            .map_err(unavailable)?;
    Ok(match (change, row) {
        (
            Change::Create {
                created_at,
                metadata,
                exchanges,
            },
            None,
        ) => {
            if caps.max_sessions.is_some() {
                super::writer::lock_caps(tx).await.map_err(unavailable)?;
                let (total,): (i64,) = sqlx::query_as("SELECT count(*) FROM sessions")
                    .fetch_one(&mut **tx)
                    .await
                    .map_err(unavailable)?;
                caps.check_new_session(total as usize)?;
            }
            caps.check_room(0, exchanges.len())?;
            let id: Option<(i64,)> = sqlx::query_as(
                "INSERT INTO sessions \
                 (session_id, message_count, first_at, last_at, next_seq, created_at, metadata) \
                 VALUES ($1, 0, $2, $2, 0, $2, $3) ON CONFLICT (session_id) DO NOTHING RETURNING id",
            )
            .bind(session)
            .bind(created_at)
            .bind(metadata_json(&metadata))
            .fetch_optional(&mut **tx)
            .await
            .map_err(unavailable)?;
            match id {
                // Another instance created it since the lookup.
                None => Changed::Created(false),
                Some((id,)) => {
                    insert(tx, id, &exchanges).await?;
                    Changed::Created(true)
                }
            }
        }
        (Change::Create { .. }, Some(_)) => Changed::Created(false),
        (Change::SetMetadata(_), None) => Changed::Metadata(false),
        (Change::SetMetadata(metadata), Some((id, _))) => {
            sqlx::query(
                "UPDATE sessions SET metadata = $2, created_at = coalesce(created_at, first_at) \
                 WHERE id = $1",
            )
            .bind(id)
            .bind(metadata_json(&metadata))
            .execute(&mut **tx)
            .await
            .map_err(unavailable)?;
            Changed::Metadata(true)
        }
        (Change::Import(_), None) => Changed::Imported(None),
        (Change::Import(exchanges), Some((id, count))) => {
            caps.check_room(count as usize, exchanges.len())?;
            Changed::Imported(Some(insert(tx, id, &exchanges).await?))
        }
        (Change::Edit { .. }, None) => Changed::Edited(None),
        (Change::Edit { at, edit }, Some((id, _))) => {
            let found: Option<NumberedRow> = match at {
                At::Seq(seq) => sqlx::query_as(&format!(
                    "SELECT {EXCHANGE_COLUMNS} FROM exchanges WHERE session_ref = $1 AND seq = $2"
                ))
                .bind(id)
                .bind(i64::try_from(seq).unwrap_or(-1))
                .fetch_optional(&mut **tx)
                .await,
                At::Position(n) => {
                    sqlx::query_as(&format!(
                        "SELECT {EXCHANGE_COLUMNS} FROM exchanges WHERE session_ref = $1 \
                         ORDER BY seq OFFSET $2 LIMIT 1"
                    ))
                    .bind(id)
                    .bind(i64::try_from(n).unwrap_or(i64::MAX))
                    .fetch_optional(&mut **tx)
                    .await
                }
            }
            .map_err(unavailable)?;
            let Some(old) = found.map(Numbered::from) else {
                return Ok(Changed::Edited(None));
            };
            Changed::Edited(Some(match edit.apply(&old.entry) {
                Some(entry) => {
                    sqlx::query(
                        "UPDATE exchanges SET user_message = $3, bot_reply = $4, search_text = $5 \
                         WHERE session_ref = $1 AND seq = $2",
                    )
                    .bind(id)
                    .bind(old.seq as i64)
                    .bind(&*entry.user_message)
                    .bind(&*entry.bot_reply)
                    .bind(search_text(&entry.user_message, &entry.bot_reply))
                    .execute(&mut **tx)
                    .await
                    .map_err(unavailable)?;
                    Edited::Kept(Numbered {
                        seq: old.seq,
                        entry,
                    })
                }
                None => {
                    remove(tx, id, old.seq).await?;
                    Edited::Removed(old.seq)
                }
            }))
        }
    })
}

/// Appends `exchanges` as given; returns their ids.
async fn insert(
    tx: &mut Transaction<'_, Postgres>,
    session_ref: i64,
    exchanges: &[ConversationEntry],
) -> Result<Vec<u64>, StoreError> {
    let mut ids = Vec::with_capacity(exchanges.len());
    for entry in exchanges {
        let (seq,): (i64,) = sqlx::query_as(
            "UPDATE sessions SET message_count = message_count + 1, next_seq = next_seq + 1, \
             first_at = CASE WHEN message_count = 0 THEN $2 ELSE first_at END, last_at = $2 \
             WHERE id = $1 RETURNING next_seq",
        )
        .bind(session_ref)
        .bind(entry.timestamp)
        .fetch_one(&mut **tx)
        .await
        .map_err(unavailable)?;
        sqlx::query(
            "INSERT INTO exchanges \
             (session_ref, seq, user_message, bot_reply, user_name, created_at, search_text) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(session_ref)
        .bind(seq)
        .bind(&*entry.user_message)
        .bind(&*entry.bot_reply)
        .bind(&*entry.user_name)
        .bind(entry.timestamp)
        .bind(search_text(&entry.user_message, &entry.bot_reply))
        .execute(&mut **tx)
        .await
        .map_err(unavailable)?;
        ids.push(seq as u64);
    }
    Ok(ids)
}

/// Removes one exchange; a seed session left empty goes with it.
async fn remove(
    tx: &mut Transaction<'_, Postgres>,
    session_ref: i64,
    seq: u64,
) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM exchanges WHERE session_ref = $1 AND seq = $2")
        .bind(session_ref)
        .bind(seq as i64)
        .execute(&mut **tx)
        .await
        .map_err(unavailable)?;
    for sql in [
        "UPDATE sessions SET message_count = message_count - 1, \
         first_at = coalesce((SELECT min(created_at) FROM exchanges WHERE session_ref = $1), first_at), \
         last_at = coalesce((SELECT max(created_at) FROM exchanges WHERE session_ref = $1), last_at) \
         WHERE id = $1",
        "DELETE FROM sessions WHERE id = $1 AND message_count = 0 AND metadata IS NULL",
    ] {
        sqlx::query(sql)
            .bind(session_ref)
            .execute(&mut **tx)
            .await
            .map_err(unavailable)?;
    }
    Ok(())
}

/// The conversation, with its exchanges if asked, in one snapshot.
pub(super) async fn read(
    pool: &PgPool,
    session: &str,
    exchanges: bool,
) -> Result<Option<Conversation>, StoreError> {
    let mut tx = pool.begin().await.map_err(unavailable)?;
    if exchanges {
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
    }
    let row: Option<(i64, i64, Option<String>)> = sqlx::query_as(
        "SELECT id, coalesce(created_at, first_at), metadata FROM sessions WHERE session_id = $1",
    )
    .bind(session)
    .fetch_optional(&mut *tx)
    .await
    .map_err(unavailable)?;
    let Some((id, created_at, metadata)) = row else {
        return Ok(None);
    };
    let exchanges = if exchanges {
        let rows: Vec<NumberedRow> = sqlx::query_as(&format!(
            "SELECT {EXCHANGE_COLUMNS} FROM exchanges WHERE session_ref = $1 ORDER BY seq"
        ))
        .bind(id)
        .fetch_all(&mut *tx)
        .await
        .map_err(unavailable)?;
        rows.into_iter().map(Numbered::from).collect()
    } else {
        Vec::new()
    };
    tx.commit().await.map_err(unavailable)?;
    Ok(Some(Conversation {
        created_at,
        metadata: metadata_from_json(metadata.as_deref()),
        exchanges,
    }))
}
