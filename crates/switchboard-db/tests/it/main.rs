//! switchboard-db tests. Every repository test runs twice, on SQLite and on PostgreSQL (the
//! workspace's one `switchboard_testkit::both_backends!` makes `<name>::sqlite` and
//! `<name>::postgres`, each given a freshly migrated database); the PostgreSQL half uses the
//! testkit's throwaway cluster and passes with a visible SKIP line where PostgreSQL is missing.

mod common;

mod audit;
mod connect;
mod lease;
mod migrate;
mod pages;
mod repos;
mod rotation;
mod schema;
mod webhooks;
