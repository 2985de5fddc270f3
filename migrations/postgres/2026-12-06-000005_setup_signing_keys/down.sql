DROP TABLE setup_signing_keys;
