//! The operator commands of docs/API.md: `serve`, `migrate`, `tenant create`, `connectors validate`,
//! `audit export`, `audit purge`.

use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "switchboard",
    version,
    about = "Multi-tenant integration connector host"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Migrate the database if needed, load connectors/, serve HTTP.
    Serve,
    /// Apply pending migrations and exit.
    Migrate,
    /// Tenant administration.
    Tenant {
        #[command(subcommand)]
        command: TenantCommand,
    },
    /// Connector definition tools.
    Connectors {
        #[command(subcommand)]
        command: ConnectorsCommand,
    },
    /// The audit trail.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Print every tenant's audit records since a time as NDJSON on stdout, oldest first.
    Export {
        /// RFC 3339 time or epoch milliseconds.
        #[arg(long)]
        since: String,
    },
    /// Delete the records older than audit.retention_days (the server also does it hourly).
    Purge,
}

#[derive(Debug, Subcommand)]
pub enum TenantCommand {
    /// Create a tenant; prints {"tenant":..,"api_key":..} on stdout (the key is shown once).
    Create { name: String },
}

#[derive(Debug, Subcommand)]
pub enum ConnectorsCommand {
    /// Check every connector file; exit 1 with file:line: message per problem.
    Validate { dir: Option<PathBuf> },
}
