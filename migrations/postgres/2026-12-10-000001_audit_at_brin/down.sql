DROP INDEX audit_events_at;
CREATE INDEX audit_events_at ON audit_events (at);
