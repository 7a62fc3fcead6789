//! `/chat/analytics` on SQLite: a few grouped queries on a reader
//! connection (the sessions the RAM cache does not hold count too).

use rusqlite::{Connection, ToSql, params_from_iter};

use crate::domain::store::{AnalyticsCounts, AnalyticsQuery, StoreError, prefix_end};

/// Exchanges of the owner's sessions in the range: `?1` from, `?2` to,
/// `?3` the prefix, `?4` the end of the prefix range (`''` for none).
const SCOPE: &str = "FROM exchanges e JOIN sessions s ON s.id = e.session_ref \
    WHERE e.created_at >= ?1 AND e.created_at < ?2 \
    AND s.session_id >= ?3 AND (?4 = '' OR s.session_id < ?4)";

/// `?1`–`?4` (the range and the owner's key range), then `more`.
fn scoped<'a>(
    query: &'a AnalyticsQuery,
    end: &'a dyn ToSql,
    more: &[&'a dyn ToSql],
) -> Vec<&'a dyn ToSql> {
    let mut all: Vec<&dyn ToSql> = vec![&query.from, &query.to, &query.prefix, end];
    all.extend_from_slice(more);
    all
}

pub(super) fn read(
    conn: &Connection,
    query: &AnalyticsQuery,
) -> Result<AnalyticsCounts, StoreError> {
    let end = prefix_end(&query.prefix).unwrap_or_default();
    let mut counts = AnalyticsCounts::default();
    let mut activity = conn.prepare_cached(&format!(
        "SELECT e.created_at - (e.created_at % ?5), count(*), count(DISTINCT e.session_ref) \
         {SCOPE} GROUP BY 1 ORDER BY 1"
    ))?;
    counts.activity = activity
        .query_map(
            params_from_iter(scoped(query, &end, &[&query.bucket])),
            |row| {
                Ok((
                    row.get(0)?,
                    row.get::<_, i64>(1)? as u64,
                    row.get::<_, i64>(2)? as u64,
                ))
            },
        )?
        .collect::<Result<_, _>>()?;
    counts.exchanges = counts.activity.iter().map(|(_, n, _)| n).sum();
    let mut new_sessions = conn.prepare_cached(
        "SELECT first_at - (first_at % ?5), count(*) FROM sessions \
         WHERE message_count > 0 AND first_at >= ?1 AND first_at < ?2 \
         AND session_id >= ?3 AND (?4 = '' OR session_id < ?4) GROUP BY 1 ORDER BY 1",
    )?;
    counts.new_sessions = new_sessions
        .query_map(
            params_from_iter(scoped(query, &end, &[&query.bucket])),
            |row| Ok((row.get(0)?, row.get::<_, i64>(1)? as u64)),
        )?
        .collect::<Result<_, _>>()?;
    let wanted = serde_json::to_string(&query.rules).unwrap_or_else(|_| "[]".into());
    let mut by_reply = conn.prepare_cached(&format!(
        "SELECT e.bot_reply, count(*) {SCOPE} \
         AND (e.bot_reply = ?5 OR e.bot_reply IN (SELECT value FROM json_each(?6))) GROUP BY 1"
    ))?;
    let replies = by_reply.query_map(
        params_from_iter(scoped(query, &end, &[&query.fallback, &wanted])),
        |row| Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)? as u64)),
    )?;
    counts.count_replies(query, replies.collect::<Result<Vec<_>, _>>()?);
    let mut unanswered = conn.prepare_cached(&format!(
        "SELECT e.user_message, count(*) {SCOPE} AND e.bot_reply = ?5 AND e.user_message <> '' \
         GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT ?6"
    ))?;
    counts.unanswered = unanswered
        .query_map(
            params_from_iter(scoped(query, &end, &[&query.fallback, &(query.top as i64)])),
            |row| Ok((row.get(0)?, row.get::<_, i64>(1)? as u64)),
        )?
        .collect::<Result<_, _>>()?;
    Ok(counts)
}
