//! switchboard-db tests. Every repository test runs twice, on SQLite and on PostgreSQL
//! (`both_backends!` makes `<name>::sqlite` and `<name>::postgres`); the PostgreSQL half uses the
//! testkit's throwaway cluster and passes with a visible SKIP line where PostgreSQL is missing.

#[macro_use]
mod common;

mod connect;
mod lease;
mod migrate;
mod pages;
mod repos;
mod schema;
