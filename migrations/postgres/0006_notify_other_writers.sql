-- Instances that share a cache in Redis (--redis-url) report their own
-- writes there before answering them. Writes by anyone else (plain SQL, an
-- earlier release still running during an upgrade) reach them as these
-- notifications: the session's row id and new version (or "gone"), and
-- its key, on channel chatbot_sessions. This program's connections set
-- chatbot.writer, so its own writes send nothing and pay nothing for it.
CREATE FUNCTION chatbot_session_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('chatbot.writer', true) IS DISTINCT FROM 'chatbot-api' THEN
        IF TG_OP = 'DELETE' THEN
            PERFORM pg_notify('chatbot_sessions', OLD.id || ':gone:' || OLD.session_id);
        ELSE
            PERFORM pg_notify('chatbot_sessions', NEW.id || ':' || NEW.version || ':' || NEW.session_id);
        END IF;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER sessions_notify AFTER INSERT OR UPDATE OR DELETE ON sessions
    FOR EACH ROW EXECUTE FUNCTION chatbot_session_notify();
