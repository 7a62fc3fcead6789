-- Answered messages as they are committed, before they take their place in
-- `exchanges` and in their session's counters. A group commit appends its
-- rows at the end of these tables (a few pages for the whole group, where a
-- row in `exchanges` and a session's row each took a page of their own); the
-- writer moves each table's rows into `exchanges` and `sessions` in large
-- batches, one transaction each ("folds"), so that many exchanges share each
-- page written. A session's rows are always in the same one of the eight
-- tables (by a hash of its id), so a fold takes an eighth of the sessions and
-- the writer pauses an eighth as long. Reads never look here: every query
-- waits for the tables to be folded first, and the server folds what a crash
-- left here before it serves.
CREATE TABLE exchange_log_0 (
    id           INTEGER PRIMARY KEY,
    session_id   TEXT    NOT NULL,
    seq          INTEGER NOT NULL,
    user_message TEXT    NOT NULL,
    bot_reply    TEXT    NOT NULL,
    user_name    TEXT    NOT NULL,
    created_at   INTEGER NOT NULL,
    search_text  TEXT    NOT NULL
);
CREATE TABLE exchange_log_1 (
    id           INTEGER PRIMARY KEY,
    session_id   TEXT    NOT NULL,
    seq          INTEGER NOT NULL,
    user_message TEXT    NOT NULL,
    bot_reply    TEXT    NOT NULL,
    user_name    TEXT    NOT NULL,
    created_at   INTEGER NOT NULL,
    search_text  TEXT    NOT NULL
);
CREATE TABLE exchange_log_2 (
    id           INTEGER PRIMARY KEY,
    session_id   TEXT    NOT NULL,
    seq          INTEGER NOT NULL,
    user_message TEXT    NOT NULL,
    bot_reply    TEXT    NOT NULL,
    user_name    TEXT    NOT NULL,
    created_at   INTEGER NOT NULL,
    search_text  TEXT    NOT NULL
);
CREATE TABLE exchange_log_3 (
    id           INTEGER PRIMARY KEY,
    session_id   TEXT    NOT NULL,
    seq          INTEGER NOT NULL,
    user_message TEXT    NOT NULL,
    bot_reply    TEXT    NOT NULL,
    user_name    TEXT    NOT NULL,
    created_at   INTEGER NOT NULL,
    search_text  TEXT    NOT NULL
);
CREATE TABLE exchange_log_4 (
    id           INTEGER PRIMARY KEY,
    session_id   TEXT    NOT NULL,
    seq          INTEGER NOT NULL,
    user_message TEXT    NOT NULL,
    bot_reply    TEXT    NOT NULL,
    user_name    TEXT    NOT NULL,
    created_at   INTEGER NOT NULL,
    search_text  TEXT    NOT NULL
);
CREATE TABLE exchange_log_5 (
    id           INTEGER PRIMARY KEY,
    session_id   TEXT    NOT NULL,
    seq          INTEGER NOT NULL,
    user_message TEXT    NOT NULL,
    bot_reply    TEXT    NOT NULL,
    user_name    TEXT    NOT NULL,
    created_at   INTEGER NOT NULL,
    search_text  TEXT    NOT NULL
);
CREATE TABLE exchange_log_6 (
    id           INTEGER PRIMARY KEY,
    session_id   TEXT    NOT NULL,
    seq          INTEGER NOT NULL,
    user_message TEXT    NOT NULL,
    bot_reply    TEXT    NOT NULL,
    user_name    TEXT    NOT NULL,
    created_at   INTEGER NOT NULL,
    search_text  TEXT    NOT NULL
);
CREATE TABLE exchange_log_7 (
    id           INTEGER PRIMARY KEY,
    session_id   TEXT    NOT NULL,
    seq          INTEGER NOT NULL,
    user_message TEXT    NOT NULL,
    bot_reply    TEXT    NOT NULL,
    user_name    TEXT    NOT NULL,
    created_at   INTEGER NOT NULL,
    search_text  TEXT    NOT NULL
);
