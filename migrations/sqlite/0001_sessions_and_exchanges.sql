-- Sessions and their exchanges. Order within a session is `seq`, a per-session
-- sequence assigned when the exchange is written, never the timestamp.
CREATE TABLE sessions (
    id            INTEGER PRIMARY KEY,
    session_id    TEXT    NOT NULL UNIQUE,
    message_count INTEGER NOT NULL,
    first_at      INTEGER NOT NULL,
    last_at       INTEGER NOT NULL
);

CREATE TABLE exchanges (
    session_ref  INTEGER NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    seq          INTEGER NOT NULL,
    user_message TEXT    NOT NULL,
    bot_reply    TEXT    NOT NULL,
    user_name    TEXT    NOT NULL,
    created_at   INTEGER NOT NULL,
    PRIMARY KEY (session_ref, seq)
) WITHOUT ROWID;
