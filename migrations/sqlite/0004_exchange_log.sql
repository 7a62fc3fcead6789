-- Answered messages as they are committed, before they take their place in
-- `exchanges` and in their session's counters. A group commit appends its
-- rows at the end of this one table (a few pages for the whole group, where a
-- row in `exchanges` and a session's row each took a page of their own); the
-- writer moves the rows into `exchanges` and `sessions` in large batches, one
-- transaction each ("folds"), so that many exchanges share each page written.
-- Reads never look here: every query waits for a fold first, and the server
-- folds what a crash left here before it serves.
CREATE TABLE exchange_log (
    id           INTEGER PRIMARY KEY,
    session_id   TEXT    NOT NULL,
    seq          INTEGER NOT NULL,
    user_message TEXT    NOT NULL,
    bot_reply    TEXT    NOT NULL,
    user_name    TEXT    NOT NULL,
    created_at   INTEGER NOT NULL,
    search_text  TEXT    NOT NULL
);
