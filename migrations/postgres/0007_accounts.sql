-- Accounts of the server's own (--accounts): who may sign in, their
-- refresh tokens (rotated on use; a family is one sign-in on one device),
-- their personal API keys, and the key that signs access tokens when no
-- --jwt-secret is given. Secrets are kept only as SHA-256 digests (tokens,
-- keys) or Argon2id PHC strings (passwords). Times are Unix seconds.
CREATE TABLE accounts (
    username      TEXT PRIMARY KEY,
    -- Random, never reused: what tokens, keys and conversations belong to,
    -- so a username deleted and taken again gets none of the old account's.
    account_id    TEXT NOT NULL UNIQUE,
    display_name  TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    admin         BIGINT NOT NULL DEFAULT 0,
    disabled      BIGINT NOT NULL DEFAULT 0,
    pending       BIGINT NOT NULL DEFAULT 0,
    -- Raised by sign-out everywhere, a password change and disabling:
    -- access tokens carry the epoch they were issued in.
    epoch         BIGINT NOT NULL DEFAULT 0,
    created_at    BIGINT NOT NULL
);
CREATE TABLE refresh_tokens (
    token_hash TEXT PRIMARY KEY,
    family     TEXT NOT NULL,
    username   TEXT NOT NULL,
    account_id TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at    BIGINT,
    -- Used once more within the grace (two tabs at once): never again.
    regraced   BIGINT NOT NULL DEFAULT 0,
    revoked    BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX refresh_tokens_family ON refresh_tokens (family);
CREATE INDEX refresh_tokens_username ON refresh_tokens (username);
CREATE TABLE account_keys (
    id           TEXT PRIMARY KEY,
    username     TEXT NOT NULL,
    account_id   TEXT NOT NULL,
    name         TEXT NOT NULL,
    key_hash     TEXT NOT NULL UNIQUE,
    hint         TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    last_used_at BIGINT
);
CREATE INDEX account_keys_username ON account_keys (username);
-- Values generated once and shared by every instance: the signing key,
-- and which account claimed being the first (the admin).
CREATE TABLE server_secrets (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
