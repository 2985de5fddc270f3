-- Cheaper audit inserts on a cluster whose default collation is not "C" (issue 13). Each
-- audit record goes into three B-trees whose keys start with text: (tenant_id, at, id),
-- (install_id, at, id) and (patient_hash, at, id). Under a libc locale such as en_US.UTF-8,
-- the usual default of a production cluster, every comparison in those trees calls strcoll;
-- under "C" it compares bytes. On an en_US.UTF-8 cluster (docs/BENCHMARKS.md, "Sixth pass"),
-- PostgreSQL spent 9.3 to 9.5 µs of CPU per audited get_patient call before, 6.8 to 7.3 after.
-- The values are ASCII identifiers and hex digests: byte order is their natural order, and the
-- order SQLite already uses (BINARY), so a trail pages in the same order on both backends.
-- Rebuilds the three indexes (not the table): on a large trail, run it in a maintenance window.
ALTER TABLE audit_events
    ALTER COLUMN id TYPE TEXT COLLATE "C",
    ALTER COLUMN tenant_id TYPE TEXT COLLATE "C",
    ALTER COLUMN install_id TYPE TEXT COLLATE "C",
    ALTER COLUMN patient_hash TYPE TEXT COLLATE "C";
