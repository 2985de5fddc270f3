-- SQLite's audit constraints roll back on conflict in this version (see its up.sql). PostgreSQL
-- takes a batch as one COPY, which has no statement journal to avoid: nothing changes here.
SELECT 1;
