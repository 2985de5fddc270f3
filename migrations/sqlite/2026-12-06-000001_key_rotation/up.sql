-- Progress of `switchboard keys rotate`: one row per registered encrypted column
-- ("table.column"), the key id every blob is being re-encrypted to, and the last row key done
-- (keyset cursor), so a rotation killed at any point resumes where it stopped.
CREATE TABLE key_rotation (
    column_name TEXT   NOT NULL PRIMARY KEY,
    target_kid  TEXT   NOT NULL,
    cursor      TEXT,
    done        BIGINT NOT NULL,
    rewritten   BIGINT NOT NULL,
    started_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);
