DROP TABLE setup_capability_checks;
