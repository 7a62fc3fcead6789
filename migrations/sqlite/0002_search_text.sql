-- Lower-cased message and reply, written by the server (Unicode-aware
-- lowercasing; SQLite's lower() only folds ASCII), for case-insensitive search.
ALTER TABLE exchanges ADD COLUMN search_text TEXT NOT NULL DEFAULT '';
UPDATE exchanges SET search_text = lower(user_message) || char(31) || lower(bot_reply);
