DROP TABLE oauth_states;
DROP TABLE installs;
DROP TABLE accounts;
DROP TABLE connector_setups;
DROP TABLE api_keys;
DROP TABLE tenants;
