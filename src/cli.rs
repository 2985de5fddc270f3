//! The operator commands of docs/API.md: `serve`, `migrate`, `tenant create`, `connectors validate`,
//! `audit export`, `audit purge`, `keys rotate`, `keys status`, `keys prune`.

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
    /// The encryption key ring (key custody).
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Add a new primary key and re-encrypt every stored secret, online and resumable (an
    /// unfinished rotation is resumed). Prints a JSON report on stdout.
    Rotate(RotateArgs),
    /// Primary key id, all key ids, values per key id per column and rotation progress (JSON).
    Status,
    /// Remove retired keys from the ring; exit 1 (naming the counts) while anything is still
    /// encrypted under one of them.
    Prune,
}

#[derive(Debug, clap::Args)]
pub struct RotateArgs {
    /// Only add a new key, not primary (SWITCHBOARD__SECRETS__KEY: print the new ring).
    #[arg(long, conflicts_with_all = ["promote", "reencrypt_only"])]
    pub stage: bool,
    /// Only make KID the primary key (SWITCHBOARD__SECRETS__KEY: print the new ring).
    #[arg(long, value_name = "KID", conflicts_with = "reencrypt_only")]
    pub promote: Option<String>,
    /// Only re-encrypt every stored secret under the current primary key, then verify.
    #[arg(long)]
    pub reencrypt_only: bool,
    /// Rows per batch (and per progress write).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(i64).range(1..))]
    pub batch_size: i64,
    /// How long to wait after each key file change for every replica to reload it
    /// (default: twice secrets.reload_interval_ms plus 500 ms).
    #[arg(long)]
    pub wait_ms: Option<u64>,
    /// Test hook: pause after every batch.
    #[arg(long, hide = true, default_value_t = 0)]
    pub pause_ms: u64,
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
