//! The listener: writes this program did not make (plain SQL, an earlier
//! release still running) reach the shared cache as notifications that the
//! database's triggers send (migration 0006), and so do an instance's own
//! writes when it could not tell Redis. Each becomes an untrusted version
//! in Redis, which the next reader on any instance checks with the
//! database.
//!
//! A notification sent while no listener was connected is lost, so each
//! (re)connection starts a new epoch: every version in Redis is checked
//! with the database once more. So is a notification that could not be
//! passed on to Redis, as soon as Redis answers again.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::{PgListener, PgPoolOptions};

use super::cache::RowVersion;
use super::shared::{GONE, Mode, Put, Shared};

/// The channel the triggers notify on.
pub(super) const CHANNEL: &str = "chatbot_sessions";
/// How long to wait before connecting again after a failure.
const RETRY: Duration = Duration::from_millis(500);

/// Listens for as long as the process runs, on a connection of its own.
pub(super) async fn listen(pool: PgPool, shared: Arc<Shared>) {
    // Its own pool of one, so that it takes nothing from the requests'.
    let own = PgPoolOptions::new()
        .max_connections(1)
        .connect_lazy_with(pool.connect_options().as_ref().clone());
    drop(pool);
    tokio::spawn(settle(shared.clone()));
    loop {
        let mut listener = match PgListener::connect_with(&own).await {
            Ok(listener) => listener,
            Err(_) => {
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        if listener.listen(CHANNEL).await.is_err() {
            tokio::time::sleep(RETRY).await;
            continue;
        }
        shared.owe();
        loop {
            match listener.try_recv().await {
                Ok(Some(notification)) => {
                    let Some((key, row)) = parse(notification.payload()) else {
                        continue;
                    };
                    shared.forget(&key);
                    let put = Put {
                        key: &key,
                        row,
                        records: None,
                        seen: None,
                    };
                    if shared.put(None, Mode::Mark, &[put], false).await.is_err() {
                        shared.owe();
                    }
                }
                // Connected again (and listening): what came meanwhile is lost.
                Ok(None) => shared.owe(),
                Err(_) => break,
            }
        }
        tokio::time::sleep(RETRY).await;
    }
}

/// Begins a new epoch whenever one is owed and Redis answers.
async fn settle(shared: Arc<Shared>) {
    loop {
        shared.settle().await;
        tokio::time::sleep(RETRY / 5).await;
    }
}

/// `id:version:key` or `id:gone:key`.
fn parse(payload: &str) -> Option<(String, RowVersion)> {
    let mut parts = payload.splitn(3, ':');
    let id = parts.next()?.parse().ok()?;
    let version = match parts.next()? {
        "gone" => GONE,
        version => version.parse().ok()?,
    };
    Some((parts.next()?.to_owned(), RowVersion { id, version }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_parse() {
        assert_eq!(
            parse("3:7:alice:chat"),
            Some(("alice:chat".into(), RowVersion { id: 3, version: 7 }))
        );
        assert_eq!(
            parse("3:gone:x"),
            Some((
                "x".into(),
                RowVersion {
                    id: 3,
                    version: GONE
                }
            ))
        );
        for bad in ["", "3", "3:7", "x:7:k", "3:y:k"] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }
}
