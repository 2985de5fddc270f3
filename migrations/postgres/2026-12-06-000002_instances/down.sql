ALTER TABLE installs DROP COLUMN refresh_expires_at;
ALTER TABLE installs DROP COLUMN last_used_at;
DROP TABLE instances;
