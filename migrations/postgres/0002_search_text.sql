-- Lower-cased message and reply, written by the server (Unicode-aware), for
-- case-insensitive search; a trigram index keeps `LIKE '%q%'` fast on large
-- tables. The extension lives in `public` (one per database, shared by every
-- schema), so the operator class is named with its schema.
CREATE EXTENSION IF NOT EXISTS pg_trgm WITH SCHEMA public;
ALTER TABLE exchanges ADD COLUMN search_text TEXT NOT NULL DEFAULT '';
UPDATE exchanges SET search_text = lower(user_message) || chr(31) || lower(bot_reply);
CREATE INDEX exchanges_search_text ON exchanges USING gin (search_text public.gin_trgm_ops);
CREATE INDEX exchanges_newest ON exchanges (created_at DESC);
