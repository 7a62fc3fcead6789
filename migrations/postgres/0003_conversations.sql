-- Conversations under /v1: exchange ids that survive edits, creation time
-- and metadata. `seq` becomes an exchange's id, never given twice in its
-- session (`next_seq` is the last one given); positions are the order of
-- `seq`. `created_at` and `metadata` (a JSON object) are NULL for sessions
-- started by POST /chat: they began with their first exchange.
ALTER TABLE sessions ADD COLUMN next_seq BIGINT NOT NULL DEFAULT 0;
UPDATE sessions SET next_seq = coalesce((SELECT max(seq) FROM exchanges WHERE session_ref = sessions.id), 0);
ALTER TABLE sessions ADD COLUMN created_at BIGINT;
ALTER TABLE sessions ADD COLUMN metadata TEXT;
