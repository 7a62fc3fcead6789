//! `/chat/analytics` on PostgreSQL: a few grouped queries in one snapshot.

use sqlx::postgres::{PgArguments, PgRow};
use sqlx::query::QueryAs;
use sqlx::{FromRow, PgPool, Postgres};

use super::unavailable;
use crate::domain::store::{AnalyticsCounts, AnalyticsQuery, StoreError, prefix_end};

/// Exchanges of the owner's sessions in the range: `$1` from, `$2` to, `$3`
/// the prefix, `$4` the end of the prefix range (`''` for none), in byte
/// order as the other stores compare.
const SCOPE: &str = "FROM exchanges e JOIN sessions s ON s.id = e.session_ref \
    WHERE e.created_at >= $1 AND e.created_at < $2 \
    AND s.session_id COLLATE \"C\" >= $3 AND ($4 = '' OR s.session_id COLLATE \"C\" < $4)";

/// `sql` with the range and the owner's key range bound as `$1`–`$4`.
fn scoped<'q, O>(
    sql: &'q str,
    query: &'q AnalyticsQuery,
    end: &'q str,
) -> QueryAs<'q, Postgres, O, PgArguments>
where
    O: for<'r> FromRow<'r, PgRow>,
{
    sqlx::query_as(sql)
        .bind(query.from)
        .bind(query.to)
        .bind(&query.prefix)
        .bind(end)
}

pub(super) async fn read(
    pool: &PgPool,
    query: &AnalyticsQuery,
) -> Result<AnalyticsCounts, StoreError> {
    let end = prefix_end(&query.prefix).unwrap_or_default();
    let mut tx = pool.begin().await.map_err(unavailable)?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
    let sql = format!(
        "SELECT e.created_at - (e.created_at % $5), count(*), count(DISTINCT e.session_ref) \
         {SCOPE} GROUP BY 1 ORDER BY 1"
    );
    let activity: Vec<(i64, i64, i64)> = scoped(&sql, query, &end)
        .bind(query.bucket)
        .fetch_all(&mut *tx)
        .await
        .map_err(unavailable)?;
    let new_sessions: Vec<(i64, i64)> = scoped(
        "SELECT first_at - (first_at % $5), count(*) FROM sessions \
         WHERE message_count > 0 AND first_at >= $1 AND first_at < $2 \
         AND session_id COLLATE \"C\" >= $3 AND ($4 = '' OR session_id COLLATE \"C\" < $4) \
         GROUP BY 1 ORDER BY 1",
        query,
        &end,
    )
    .bind(query.bucket)
    .fetch_all(&mut *tx)
    .await
    .map_err(unavailable)?;
    let sql = format!(
        "SELECT e.bot_reply, count(*) {SCOPE} AND (e.bot_reply = $5 OR e.bot_reply = ANY($6)) \
         GROUP BY 1"
    );
    let replies: Vec<(String, i64)> = scoped(&sql, query, &end)
        .bind(&query.fallback)
        .bind(&query.rules)
        .fetch_all(&mut *tx)
        .await
        .map_err(unavailable)?;
    let sql = format!(
        "SELECT e.user_message, count(*) {SCOPE} AND e.bot_reply = $5 AND e.user_message <> '' \
         GROUP BY 1 ORDER BY 2 DESC, e.user_message COLLATE \"C\" LIMIT $6"
    );
    let unanswered: Vec<(String, i64)> = scoped(&sql, query, &end)
        .bind(&query.fallback)
        .bind(query.top as i64)
        .fetch_all(&mut *tx)
        .await
        .map_err(unavailable)?;
    tx.commit().await.map_err(unavailable)?;
    let mut counts = AnalyticsCounts {
        activity: activity
            .into_iter()
            .map(|(b, e, s)| (b, e as u64, s as u64))
            .collect(),
        new_sessions: new_sessions
            .into_iter()
            .map(|(b, n)| (b, n as u64))
            .collect(),
        unanswered: unanswered.into_iter().map(|(m, n)| (m, n as u64)).collect(),
        ..AnalyticsCounts::default()
    };
    counts.exchanges = counts.activity.iter().map(|(_, n, _)| n).sum();
    counts.count_replies(query, replies.into_iter().map(|(r, n)| (r, n as u64)));
    Ok(counts)
}
