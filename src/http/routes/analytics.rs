//! `GET /chat/analytics`: what the bot did over a time range, within the
//! caller's key scope: exchanges and active sessions per bucket, new
//! sessions, the share of fallback replies, the rules used most, and the
//! messages the bot most often had no rule for (what to write rules for next).

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::domain::models::now;
use crate::domain::store::AnalyticsQuery;
use crate::http::AppState;
use crate::http::auth::Owner;
use crate::http::docs::{AnalyticsBody, ConversationErrors, ValidationBody};
use crate::http::error::ApiError;
use crate::http::extract::QueryParams;

/// The most buckets one answer may have.
const MAX_BUCKETS: i64 = 2000;
/// A fallback no stored reply can equal, for an engine without one.
const NO_FALLBACK: &str = "\0";

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(analytics))
}

use crate::domain::models::format_rfc3339 as rfc3339;

#[utoipa::path(get, path = "/chat/analytics", operation_id = "get_analytics", tag = "sessions", summary = "Analytics",
    description = "Exchanges stored in `[from, to)` in the caller's sessions: per bucket (UTC hours or days) the exchanges, the sessions active and the sessions begun; the share of replies that were the fallback line; how often each rule answered; the messages most often answered with the fallback.",
    params(
        ("from" = Option<String>, Query, description = "RFC 3339, YYYY-MM-DD (UTC midnight) or Unix seconds; default: 7 days (48 hours for `bucket=hour`) before `to`"),
        ("to" = Option<String>, Query, description = "Same forms, exclusive; default: now"),
        ("bucket" = Option<String>, Query, description = "`day` (default) or `hour`"),
        ("top" = Option<u32>, Query, minimum = 1, maximum = 100, description = "How many unanswered messages to list (default 10)"),
    ),
    responses(
        (status = 200, description = "The counts", body = AnalyticsBody),
        (status = 422, description = "Invalid query parameters", body = ValidationBody),
        ConversationErrors,
    ))]
async fn analytics(
    State(state): State<AppState>,
    owner: Owner,
    mut query: QueryParams,
) -> Result<Json<Value>, ApiError> {
    let from = query.time("from");
    let to = query.time("to");
    let bucket_name = query.choice("bucket", &["day", "hour"], "day");
    let top = query.int("top", 1, 100).unwrap_or(10) as usize;
    let bucket = if bucket_name == "hour" { 3600 } else { 86_400 };
    let to = to.unwrap_or_else(|| now() + 1);
    let from = from.unwrap_or(
        to - if bucket == 3600 {
            48 * 3600
        } else {
            7 * 86_400
        },
    );
    if from >= to {
        query.refuse("from", "from must be before to");
    } else if (to - from) / bucket > MAX_BUCKETS {
        query.refuse(
            "bucket",
            &format!("at most {MAX_BUCKETS} buckets per answer"),
        );
    }
    query.finish()?;
    let catalog = state.replies.rules.catalog();
    let request = AnalyticsQuery {
        prefix: owner.prefix().to_owned(),
        from,
        to,
        bucket,
        rules: catalog
            .rules
            .iter()
            .map(|(_, reply)| reply.to_string())
            .collect(),
        fallback: catalog
            .fallback
            .as_deref()
            .map_or_else(|| NO_FALLBACK.to_owned(), str::to_owned),
        top,
    };
    let counts = state.store.analytics(&request).await?;
    let mut buckets = Vec::new();
    let mut start = request.bucket_of(from);
    while start < to {
        let active = counts.activity.iter().find(|(b, _, _)| *b == start);
        let begun = counts.new_sessions.iter().find(|(b, _)| *b == start);
        buckets.push(json!({
            "start": rfc3339(start),
            "exchanges": active.map_or(0, |a| a.1),
            "active_sessions": active.map_or(0, |a| a.2),
            "new_sessions": begun.map_or(0, |b| b.1),
        }));
        start += bucket;
    }
    let mut rules: Vec<(&str, &str, u64)> = catalog
        .rules
        .iter()
        .zip(&counts.rule_exchanges)
        .map(|((name, reply), n)| (&**name, &**reply, *n))
        .collect();
    rules.sort_by_key(|rule| std::cmp::Reverse(rule.2));
    let share = if counts.exchanges == 0 {
        0.0
    } else {
        counts.fallback_exchanges as f64 / counts.exchanges as f64
    };
    Ok(Json(json!({
        "from": rfc3339(from),
        "to": rfc3339(to),
        "bucket": bucket_name,
        "buckets": buckets,
        "exchanges": counts.exchanges,
        "new_sessions": counts.new_sessions.iter().map(|(_, n)| n).sum::<u64>(),
        "fallback_exchanges": counts.fallback_exchanges,
        "fallback_share": (share * 10_000.0).round() / 10_000.0,
        "rules": rules.iter().map(|(name, reply, n)| json!({"rule": name, "reply": reply, "exchanges": n})).collect::<Vec<_>>(),
        "unanswered": counts.unanswered.iter().map(|(message, n)| json!({"message": message, "count": n})).collect::<Vec<_>>(),
    })))
}
