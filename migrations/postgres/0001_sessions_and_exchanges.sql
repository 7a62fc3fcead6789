-- Sessions and their exchanges. Order within a session is `seq`, a per-session
-- sequence assigned under the session row's lock, never the timestamp, so two
-- instances writing to one session still produce one order.
CREATE TABLE sessions (
    id            BIGSERIAL PRIMARY KEY,
    session_id    TEXT   NOT NULL UNIQUE,
    message_count BIGINT NOT NULL,
    first_at      BIGINT NOT NULL,
    last_at       BIGINT NOT NULL
);

CREATE TABLE exchanges (
    session_ref  BIGINT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    seq          BIGINT NOT NULL,
    user_message TEXT   NOT NULL,
    bot_reply    TEXT   NOT NULL,
    user_name    TEXT   NOT NULL,
    created_at   BIGINT NOT NULL,
    PRIMARY KEY (session_ref, seq)
);
