-- Search lower-cases messages and replies as it reads them (the server's
-- function chatbot_finds, the same test as memory mode's), so the
-- lower-cased copy of every message and reply is no longer kept: it made
-- each row about half as large again, in the log tables and in
-- `exchanges`, for every write, every fold and every cold read.
-- (PostgreSQL keeps its copy: its trigram index needs it.)
ALTER TABLE exchanges DROP COLUMN search_text;
ALTER TABLE exchange_log_0 DROP COLUMN search_text;
ALTER TABLE exchange_log_1 DROP COLUMN search_text;
ALTER TABLE exchange_log_2 DROP COLUMN search_text;
ALTER TABLE exchange_log_3 DROP COLUMN search_text;
ALTER TABLE exchange_log_4 DROP COLUMN search_text;
ALTER TABLE exchange_log_5 DROP COLUMN search_text;
ALTER TABLE exchange_log_6 DROP COLUMN search_text;
ALTER TABLE exchange_log_7 DROP COLUMN search_text;
