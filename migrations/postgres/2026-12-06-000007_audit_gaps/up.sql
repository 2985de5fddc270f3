-- Audit gaps (issue 13): the id of the API key that started an authorization, so the OAuth
-- callback's "install.authorized" record can name it (the browser's callback carries no key).
-- An id, never the key. NULL for states written before this migration.
ALTER TABLE oauth_states ADD COLUMN api_key_id TEXT;
