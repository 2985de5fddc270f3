ALTER TABLE audit_events
    ALTER COLUMN id TYPE TEXT COLLATE "default",
    ALTER COLUMN tenant_id TYPE TEXT COLLATE "default",
    ALTER COLUMN install_id TYPE TEXT COLLATE "default",
    ALTER COLUMN patient_hash TYPE TEXT COLLATE "default";
