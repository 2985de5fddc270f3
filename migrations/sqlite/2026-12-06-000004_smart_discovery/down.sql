DROP TABLE smart_discovery;
