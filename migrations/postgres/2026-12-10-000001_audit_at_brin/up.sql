-- Cheaper audit inserts (issues 13 and 14): `audit_events_at` serves only the retention purge
-- (`at < cutoff`) and the export (`at >= since`), both range scans across tenants over a table
-- written in time order. A BRIN index fits that: a few bytes per range of 128 heap pages, and
-- an insert updates at most one summary, where the B-tree took a tuple and its WAL record per
-- row (about 1 µs of the server's CPU per record; docs/BENCHMARKS.md, "Fifth pass"). The
-- export now reads one ordered query (the server sorts what the index finds) instead of keyset
-- pages, which a BRIN index cannot give in order. `autosummarize` summarises each range as it
-- fills, so the purge's scan stays narrow between vacuums. SQLite has no BRIN: its B-tree stays.
DROP INDEX audit_events_at;
CREATE INDEX audit_events_at ON audit_events USING brin (at) WITH (autosummarize = on);
