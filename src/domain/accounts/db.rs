//! Where accounts live: the tables of `migrations/*/…_accounts.sql`, in the
//! store's own database (the SQLite file, or the PostgreSQL every instance
//! shares), or in an in-memory SQLite database in memory mode.
//!
//! One set of statements serves every backend through sqlx's `Any` driver:
//! `$N` parameters work on SQLite and PostgreSQL alike, and accounts are
//! far from the hot path, so the driver's small cost does not matter.

use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

use super::{Account, AccountError, Key, State};
use crate::domain::store::StoreKind;

/// The accounts' connections.
#[derive(Clone)]
pub struct AccountDb {
    pool: AnyPool,
}

/// What using a refresh token found.
#[derive(Debug, PartialEq, Eq)]
pub enum Rotation {
    /// Exchanged: the account it belongs to (its name and id).
    Rotated {
        username: String,
        account_id: String,
    },
    /// Used before (or revoked): its whole family is revoked now.
    Reused,
    /// Unknown or expired.
    Invalid,
}

fn unavailable(err: sqlx::Error) -> AccountError {
    AccountError::Unavailable(err.to_string())
}

/// The row changes that could leave no admin lock (in `server_secrets`).
const ADMIN_LOCK: &str = "admin_lock";

const ACCOUNT_COLUMNS: &str = "username, display_name, admin, disabled, pending, created_at, epoch, password_hash, account_id";

fn account(row: &AnyRow) -> Result<(Account, State, String), sqlx::Error> {
    let account = Account {
        id: row.try_get(8)?,
        username: row.try_get(0)?,
        display_name: row.try_get(1)?,
        admin: row.try_get::<i64, _>(2)? != 0,
        disabled: row.try_get::<i64, _>(3)? != 0,
        pending: row.try_get::<i64, _>(4)? != 0,
        created_at: row.try_get(5)?,
    };
    let state = State {
        id: account.id.clone(),
        epoch: row.try_get(6)?,
        admin: account.admin,
        disabled: account.disabled,
        pending: account.pending,
    };
    Ok((account, state, row.try_get(7)?))
}

impl AccountDb {
    /// The accounts' tables in the database of the store `kind` names
    /// (which ran the migrations), or in memory.
    pub async fn open(kind: &StoreKind) -> Result<Self, AccountError> {
        match kind {
            StoreKind::Memory => Self::memory().await,
            StoreKind::Sqlite(path) => Self::sqlite(path).await,
            StoreKind::Postgres(url) => Self::postgres(url).await,
        }
    }

    /// The tables in the SQLite file at `path` (its store ran the migrations).
    pub async fn sqlite(path: &str) -> Result<Self, AccountError> {
        sqlx::any::install_default_drivers();
        // Every change durable before it is answered, unlike the store's
        // own connections (whose writer syncs by itself).
        let url = format!("sqlite:{path}");
        Self::connect(
            &url,
            2,
            &["PRAGMA busy_timeout = 5000", "PRAGMA synchronous = FULL"],
        )
        .await
    }

    /// The tables in the PostgreSQL database at `url` (its store ran the migrations).
    pub async fn postgres(url: &str) -> Result<Self, AccountError> {
        sqlx::any::install_default_drivers();
        Self::connect(url, 4, &[]).await
    }

    /// Tables in memory, gone when the process ends (memory mode).
    pub async fn memory() -> Result<Self, AccountError> {
        sqlx::any::install_default_drivers();
        // One connection: each in-memory SQLite connection is a database of its own.
        let db = Self::connect("sqlite::memory:", 1, &[]).await?;
        let schema = include_str!("../../../migrations/sqlite/0006_accounts.sql");
        let code: String = schema
            .lines()
            .filter(|l| !l.trim_start().starts_with("--"))
            .collect::<Vec<_>>()
            .join("\n");
        let statements = code.split(';').filter(|s| !s.trim().is_empty());
        for statement in statements {
            sqlx::query(statement)
                .execute(&db.pool)
                .await
                .map_err(unavailable)?;
        }
        Ok(db)
    }

    async fn connect(url: &str, size: u32, setup: &[&'static str]) -> Result<Self, AccountError> {
        let options = AnyConnectOptions::from_str(url).map_err(unavailable)?;
        let setup: Vec<&'static str> = setup.to_vec();
        let pool = AnyPoolOptions::new()
            .max_connections(size)
            .min_connections(if url.contains(":memory:") { 1 } else { 0 })
            .idle_timeout(if url.contains(":memory:") {
                None
            } else {
                Some(Duration::from_secs(600))
            })
            .max_lifetime(None)
            .acquire_timeout(Duration::from_secs(5))
            .after_connect(move |conn, _| {
                let setup = setup.clone();
                Box::pin(async move {
                    for statement in setup {
                        sqlx::query(statement).execute(&mut *conn).await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await
            .map_err(unavailable)?;
        Ok(Self { pool })
    }

    /// The value of `name`, set to `generate()` by the first instance that
    /// asks (every instance on one database reads the same).
    pub async fn secret(&self, name: &str, generated: String) -> Result<String, AccountError> {
        sqlx::query(
            "INSERT INTO server_secrets (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(generated)
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        sqlx::query("SELECT value FROM server_secrets WHERE name = $1")
            .bind(name)
            .fetch_one(&self.pool)
            .await
            .and_then(|row| row.try_get(0))
            .map_err(unavailable)
    }

    /// Claims `name` for `value`: true for the first claim only.
    pub async fn claim(&self, name: &str, value: &str) -> Result<bool, AccountError> {
        let done = sqlx::query(
            "INSERT INTO server_secrets (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(value)
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(done.rows_affected() == 1)
    }

    /// Whether `name` has been claimed.
    pub async fn claimed(&self, name: &str) -> Result<bool, AccountError> {
        let row = sqlx::query("SELECT 1 FROM server_secrets WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(row.is_some())
    }

    /// Adds `account`; `false` when the username is taken.
    pub async fn insert(
        &self,
        account: &Account,
        password_hash: &str,
    ) -> Result<bool, AccountError> {
        let done = sqlx::query(
            "INSERT INTO accounts (username, display_name, password_hash, admin, disabled, pending, epoch, created_at, account_id) \
             VALUES ($1, $2, $3, $4, $5, $6, 0, $7, $8) ON CONFLICT (username) DO NOTHING",
        )
        .bind(&account.username)
        .bind(&account.display_name)
        .bind(password_hash)
        .bind(i64::from(account.admin))
        .bind(i64::from(account.disabled))
        .bind(i64::from(account.pending))
        .bind(account.created_at)
        .bind(&account.id)
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(done.rows_affected() == 1)
    }

    /// Adds `account` as the first one, an admin, in one transaction with
    /// the claim to be first: `Some(true)` done, `Some(false)` someone was
    /// first already (nothing stored), `None` the username is taken.
    pub async fn insert_first(
        &self,
        account: &Account,
        password_hash: &str,
        claim: &str,
    ) -> Result<Option<bool>, AccountError> {
        let mut tx = self.pool.begin().await.map_err(unavailable)?;
        let claimed = sqlx::query(
            "INSERT INTO server_secrets (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
        )
        .bind(claim)
        .bind(&account.username)
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
        if claimed.rows_affected() != 1 {
            tx.rollback().await.map_err(unavailable)?;
            return Ok(Some(false));
        }
        let inserted = sqlx::query(
            "INSERT INTO accounts (username, display_name, password_hash, admin, disabled, pending, epoch, created_at, account_id) \
             VALUES ($1, $2, $3, 1, 0, 0, 0, $4, $5) ON CONFLICT (username) DO NOTHING",
        )
        .bind(&account.username)
        .bind(&account.display_name)
        .bind(password_hash)
        .bind(account.created_at)
        .bind(&account.id)
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
        if inserted.rows_affected() != 1 {
            tx.rollback().await.map_err(unavailable)?;
            return Ok(None);
        }
        tx.commit().await.map_err(unavailable)?;
        Ok(Some(true))
    }

    /// The account, its state and its password hash.
    pub async fn get(
        &self,
        username: &str,
    ) -> Result<Option<(Account, State, String)>, AccountError> {
        let row = sqlx::query(&format!(
            "SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE username = $1"
        ))
        .bind(username)
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?;
        row.as_ref().map(account).transpose().map_err(unavailable)
    }

    /// Every account, by username.
    pub async fn list(&self) -> Result<Vec<Account>, AccountError> {
        let rows = sqlx::query(&format!(
            "SELECT {ACCOUNT_COLUMNS} FROM accounts ORDER BY username"
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        rows.iter()
            .map(|row| account(row).map(|(a, _, _)| a))
            .collect::<Result<_, _>>()
            .map_err(unavailable)
    }

    /// Sets the flags given; with `revoke`, also raises the epoch and
    /// revokes every refresh token. `false` when there is no such account.
    /// With `keep_an_admin`, refused ([`AccountError::LastAdmin`]) if it
    /// would leave no active admin: such changes take one lock row first,
    /// so two admins demoting each other at once cannot both pass.
    pub async fn update(
        &self,
        username: &str,
        admin: Option<bool>,
        disabled: Option<bool>,
        pending: Option<bool>,
        revoke: bool,
        keep_an_admin: bool,
    ) -> Result<bool, AccountError> {
        let flag = |v: Option<bool>| v.map(i64::from);
        let mut tx = self.pool.begin().await.map_err(unavailable)?;
        if keep_an_admin {
            sqlx::query("UPDATE server_secrets SET value = value WHERE name = $1")
                .bind(ADMIN_LOCK)
                .execute(&mut *tx)
                .await
                .map_err(unavailable)?;
        }
        let done = sqlx::query(
            "UPDATE accounts SET admin = COALESCE($2, admin), disabled = COALESCE($3, disabled), \
             pending = COALESCE($4, pending), epoch = epoch + $5 WHERE username = $1",
        )
        .bind(username)
        .bind(flag(admin))
        .bind(flag(disabled))
        .bind(flag(pending))
        .bind(i64::from(revoke))
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
        if keep_an_admin {
            let left: i64 = sqlx::query(
                "SELECT COUNT(*) FROM accounts WHERE admin = 1 AND disabled = 0 AND pending = 0",
            )
            .fetch_one(&mut *tx)
            .await
            .and_then(|row| row.try_get(0))
            .map_err(unavailable)?;
            if left == 0 {
                tx.rollback().await.map_err(unavailable)?;
                return Err(AccountError::LastAdmin);
            }
        }
        if revoke {
            revoke_all(&mut tx, username).await?;
        }
        tx.commit().await.map_err(unavailable)?;
        Ok(done.rows_affected() == 1)
    }

    /// Makes the row [`AccountDb::update`] locks (once, by any instance).
    pub async fn ensure_admin_lock(&self) -> Result<(), AccountError> {
        sqlx::query(
            "INSERT INTO server_secrets (name, value) VALUES ($1, '') ON CONFLICT (name) DO NOTHING",
        )
        .bind(ADMIN_LOCK)
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(())
    }

    /// A new password hash; with `revoke`, every session of the account ends.
    pub async fn set_password(
        &self,
        username: &str,
        password_hash: &str,
        revoke: bool,
    ) -> Result<bool, AccountError> {
        let mut tx = self.pool.begin().await.map_err(unavailable)?;
        let done = sqlx::query(
            "UPDATE accounts SET password_hash = $2, epoch = epoch + $3 WHERE username = $1",
        )
        .bind(username)
        .bind(password_hash)
        .bind(i64::from(revoke))
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
        if revoke {
            revoke_all(&mut tx, username).await?;
        }
        tx.commit().await.map_err(unavailable)?;
        Ok(done.rows_affected() == 1)
    }

    /// Removes the account, its refresh tokens and its keys.
    pub async fn delete(&self, username: &str) -> Result<bool, AccountError> {
        let mut tx = self.pool.begin().await.map_err(unavailable)?;
        let done = sqlx::query("DELETE FROM accounts WHERE username = $1")
            .bind(username)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
        for table in ["refresh_tokens", "account_keys"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE username = $1"))
                .bind(username)
                .execute(&mut *tx)
                .await
                .map_err(unavailable)?;
        }
        tx.commit().await.map_err(unavailable)?;
        Ok(done.rows_affected() == 1)
    }

    /// Raises the epoch and revokes every refresh token (sign-out everywhere).
    pub async fn revoke_everything(&self, username: &str) -> Result<(), AccountError> {
        self.update(username, None, None, None, true, false)
            .await
            .map(drop)
    }

    /// Keeps a new refresh token (its digest).
    pub async fn insert_refresh(
        &self,
        token_hash: &str,
        family: &str,
        (username, account_id): (&str, &str),
        now: i64,
        expires_at: i64,
    ) -> Result<(), AccountError> {
        sqlx::query(
            "INSERT INTO refresh_tokens (token_hash, family, username, account_id, created_at, expires_at, revoked) \
             VALUES ($1, $2, $3, $6, $4, $5, 0)",
        )
        .bind(token_hash)
        .bind(family)
        .bind(username)
        .bind(now)
        .bind(expires_at)
        .bind(account_id)
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(())
    }

    /// Exchanges the refresh token `old` for `new` (same family), once: a
    /// second use of `old` revokes the family (RFC 9700 §4.14.2).
    ///
    /// A token used less than `grace` ago works once more (two tabs of one
    /// page refreshing at once share one cookie); with no grace, never.
    ///
    /// Every change to an account's refresh tokens first locks its row in
    /// `accounts` (sign-out everywhere and password changes do too), so a
    /// rotation and a revocation never pass each other: on PostgreSQL a
    /// revocation would otherwise miss a new token an unfinished rotation
    /// inserted. On SQLite that first write takes the write lock.
    pub async fn rotate(
        &self,
        old: &str,
        new: &str,
        now: i64,
        expires_at: i64,
        grace: i64,
    ) -> Result<Rotation, AccountError> {
        // Unknown tokens (garbage) cost one read, never a write.
        let Some(username) = self.token_owner(old).await? else {
            return Ok(Rotation::Invalid);
        };
        let used_since = if grace > 0 { now - grace } else { i64::MAX };
        let mut tx = self.pool.begin().await.map_err(unavailable)?;
        lock_account(&mut tx, &username).await?;
        let used = sqlx::query(
            "UPDATE refresh_tokens SET regraced = CASE WHEN used_at IS NULL THEN 0 ELSE 1 END, \
             used_at = COALESCE(used_at, $2) \
             WHERE token_hash = $1 AND revoked = 0 AND expires_at > $2 \
             AND (used_at IS NULL OR (used_at >= $3 AND regraced = 0))",
        )
        .bind(old)
        .bind(now)
        .bind(used_since)
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
        let row = sqlx::query(
            "SELECT family, username, account_id, used_at, revoked FROM refresh_tokens WHERE token_hash = $1",
        )
        .bind(old)
        .fetch_optional(&mut *tx)
        .await
        .map_err(unavailable)?;
        // Ended at once on every path, never left open on its connection
        // (an open transaction would hold its locks until the pool
        // got round to rolling it back).
        let Some(row) = row else {
            tx.commit().await.map_err(unavailable)?;
            return Ok(Rotation::Invalid);
        };
        let family: String = row.try_get(0).map_err(unavailable)?;
        let username: String = row.try_get(1).map_err(unavailable)?;
        let account_id: String = row.try_get(2).map_err(unavailable)?;
        if used.rows_affected() == 1 {
            sqlx::query(
                "INSERT INTO refresh_tokens (token_hash, family, username, account_id, created_at, expires_at, revoked) \
                 VALUES ($1, $2, $3, $4, $5, $6, 0)",
            )
            .bind(new)
            .bind(&family)
            .bind(&username)
            .bind(&account_id)
            .bind(now)
            .bind(expires_at)
            .execute(&mut *tx)
            .await
            .map_err(unavailable)?;
            tx.commit().await.map_err(unavailable)?;
            return Ok(Rotation::Rotated {
                username,
                account_id,
            });
        }
        let reused = row
            .try_get::<Option<i64>, _>(3)
            .map_err(unavailable)?
            .is_some()
            || row.try_get::<i64, _>(4).map_err(unavailable)? != 0;
        if reused {
            sqlx::query("UPDATE refresh_tokens SET revoked = 1 WHERE family = $1")
                .bind(&family)
                .execute(&mut *tx)
                .await
                .map_err(unavailable)?;
            tx.commit().await.map_err(unavailable)?;
            return Ok(Rotation::Reused);
        }
        // Expired.
        tx.commit().await.map_err(unavailable)?;
        Ok(Rotation::Invalid)
    }

    /// The account a refresh token (its digest) belongs to, if any.
    async fn token_owner(&self, token_hash: &str) -> Result<Option<String>, AccountError> {
        let row = sqlx::query("SELECT username FROM refresh_tokens WHERE token_hash = $1")
            .bind(token_hash)
            .fetch_optional(&self.pool)
            .await
            .map_err(unavailable)?;
        row.map(|row| row.try_get(0))
            .transpose()
            .map_err(unavailable)
    }

    /// Revokes the family of the refresh token `token_hash` (sign-out of
    /// one device), under the account's lock as [`AccountDb::rotate`].
    pub async fn revoke_family_of(&self, token_hash: &str) -> Result<(), AccountError> {
        let Some(username) = self.token_owner(token_hash).await? else {
            return Ok(());
        };
        let mut tx = self.pool.begin().await.map_err(unavailable)?;
        lock_account(&mut tx, &username).await?;
        sqlx::query(
            "UPDATE refresh_tokens SET revoked = 1 \
             WHERE family = (SELECT family FROM refresh_tokens WHERE token_hash = $1)",
        )
        .bind(token_hash)
        .execute(&mut *tx)
        .await
        .map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)
    }

    /// Drops refresh tokens expired before `before`.
    pub async fn expire_refresh(&self, before: i64) -> Result<u64, AccountError> {
        sqlx::query("DELETE FROM refresh_tokens WHERE expires_at < $1")
            .bind(before)
            .execute(&self.pool)
            .await
            .map(|done| done.rows_affected())
            .map_err(unavailable)
    }

    /// Keeps a personal key (its digest).
    pub async fn insert_key(
        &self,
        key: &Key,
        key_hash: &str,
        account_id: &str,
    ) -> Result<(), AccountError> {
        sqlx::query(
            "INSERT INTO account_keys (id, username, account_id, name, key_hash, hint, created_at) \
             VALUES ($1, $2, $7, $3, $4, $5, $6)",
        )
        .bind(&key.id)
        .bind(&key.username)
        .bind(&key.name)
        .bind(key_hash)
        .bind(&key.hint)
        .bind(key.created_at)
        .bind(account_id)
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(())
    }

    /// The account's keys, oldest first.
    pub async fn keys(&self, username: &str) -> Result<Vec<Key>, AccountError> {
        let rows = sqlx::query(
            "SELECT id, username, name, hint, created_at, last_used_at FROM account_keys \
             WHERE username = $1 ORDER BY created_at, id",
        )
        .bind(username)
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        rows.iter()
            .map(|row| {
                Ok(Key {
                    id: row.try_get(0)?,
                    username: row.try_get(1)?,
                    name: row.try_get(2)?,
                    hint: row.try_get(3)?,
                    created_at: row.try_get(4)?,
                    last_used_at: row.try_get(5)?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(unavailable)
    }

    /// Removes one of the account's keys; `false` when it has no such key.
    pub async fn delete_key(&self, username: &str, id: &str) -> Result<bool, AccountError> {
        sqlx::query("DELETE FROM account_keys WHERE username = $1 AND id = $2")
            .bind(username)
            .bind(id)
            .execute(&self.pool)
            .await
            .map(|done| done.rows_affected() == 1)
            .map_err(unavailable)
    }

    /// The key with this digest: its id and account.
    pub async fn key_by_hash(
        &self,
        key_hash: &str,
    ) -> Result<Option<(String, String, String)>, AccountError> {
        let row =
            sqlx::query("SELECT id, username, account_id FROM account_keys WHERE key_hash = $1")
                .bind(key_hash)
                .fetch_optional(&self.pool)
                .await
                .map_err(unavailable)?;
        row.map(|row| Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?)))
            .transpose()
            .map_err(unavailable)
    }

    /// Notes that the key was used at `now`.
    pub async fn touch_key(&self, id: &str, now: i64) -> Result<(), AccountError> {
        sqlx::query("UPDATE account_keys SET last_used_at = $2 WHERE id = $1")
            .bind(id)
            .bind(now)
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Locks the account's row until the transaction ends (see [`AccountDb::rotate`]).
async fn lock_account(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    username: &str,
) -> Result<(), AccountError> {
    sqlx::query("UPDATE accounts SET epoch = epoch WHERE username = $1")
        .bind(username)
        .execute(&mut **tx)
        .await
        .map_err(unavailable)?;
    Ok(())
}

async fn revoke_all(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    username: &str,
) -> Result<(), AccountError> {
    sqlx::query("UPDATE refresh_tokens SET revoked = 1 WHERE username = $1 AND revoked = 0")
        .bind(username)
        .execute(&mut **tx)
        .await
        .map_err(unavailable)?;
    Ok(())
}
