ALTER TABLE oauth_states DROP COLUMN api_key_id;
