-- PostgreSQL's `audit_events_at` becomes a BRIN index in this version (see its up.sql).
-- SQLite has no BRIN index: its B-tree on `at` stays, and nothing changes here.
SELECT 1;
