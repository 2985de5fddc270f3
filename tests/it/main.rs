//! The end-to-end suite: one test binary, each test starting the real server (the same
//! `Application::build_with_listener` as `main`) on a random port against a fresh database,
//! on SQLite and on PostgreSQL (a throwaway cluster started by the suite). One file per resource;
//! the fixtures and the problem assertion every file uses live in `support`.

mod support;

/// The workspace's one `both_backends!` (switchboard-testkit), as `crate::both_backends!`.
use switchboard_testkit::both_backends;

mod accounts;
mod api_basics;
mod api_keys;
mod audit;
mod backend_services;
mod bulk;
mod capability;
mod cli;
mod connect;
mod connectors;
mod console;
mod db_outage;
mod error_codes;
mod fhir_reads;
mod installs;
mod keys;
mod limits;
mod lists;
mod mcp;
mod methods;
mod metrics;
mod oauth_flows;
mod openapi;
mod operational;
mod security;
mod setups;
mod smart;
mod token_lifecycle;
mod webhooks;
mod writes;
