//! Repositories: plain functions on `&mut AnyConnection`. Functions on tenant data take the
//! tenant id first (or an insertable that carries it) and filter by it.

pub mod accounts;
pub mod agent_sessions;
pub mod api_keys;
pub mod audit;
pub mod bulk_jobs;
pub mod capability;
pub mod connect_sessions;
pub mod console_sessions;
pub mod discovery;
pub mod idempotency;
pub mod installs;
pub mod instances;
pub mod lease;
pub mod oauth_states;
pub mod page;
mod revocable;
pub mod rotation;
pub mod setups;
pub mod signing_keys;
pub mod tenants;
pub mod webhooks;
