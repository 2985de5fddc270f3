-- PostgreSQL's audit key columns take the "C" collation in this version (see its up.sql).
-- SQLite already compares text by its bytes (BINARY): nothing changes here.
SELECT 1;
