-- A session's version, raised by every change to it, so that an instance may
-- keep a copy of a session and check it against the database in the very
-- query that serves a read (a copy whose row id and version still match is
-- current as of that query's snapshot). Triggers raise it, so every writer
-- does, including an instance of an earlier release still running while
-- another upgrades: any update of the session's row, and an edit of one of
-- its exchanges (the one change that does not update the row itself).
-- Appends, removals and metadata updates all update the row.
ALTER TABLE sessions ADD COLUMN version BIGINT NOT NULL DEFAULT 0;

CREATE FUNCTION chatbot_session_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.version := OLD.version + 1;
    RETURN NEW;
END $$;

CREATE TRIGGER sessions_version BEFORE UPDATE ON sessions
    FOR EACH ROW EXECUTE FUNCTION chatbot_session_changed();

CREATE FUNCTION chatbot_exchange_edited() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE sessions SET version = version WHERE id = NEW.session_ref;
    RETURN NULL;
END $$;

CREATE TRIGGER exchanges_edit AFTER UPDATE ON exchanges
    FOR EACH ROW EXECUTE FUNCTION chatbot_exchange_edited();
