//! The end-to-end suite: one test binary, each test starting the real server (the same
//! `Application::build_with_listener` as `main`) on a random port against a fresh database,
//! on SQLite and on PostgreSQL (a throwaway cluster started by the suite).

mod support;

mod api_basics;
mod foundation;
mod methods;
mod oauth_flows;
mod openapi;
mod token_lifecycle;
