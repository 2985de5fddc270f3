use clap::Parser;
use std::process::ExitCode;
use switchboard::cli::{
    AuditCommand, Cli, Command, ConnectorsCommand, KeysCommand, RotateArgs, TenantCommand,
};
use switchboard::{telemetry, Application};
use switchboard_config::Settings;
use switchboard_service::Services;

fn main() -> ExitCode {
    switchboard::malloc::tune();
    let cli = Cli::parse();
    let settings = match Settings::load() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if let Command::Connectors {
        command: ConnectorsCommand::Validate { dir },
    } = &cli.command
    {
        let dir = dir
            .clone()
            .unwrap_or_else(|| settings.connectors.dir.clone());
        return match switchboard_connector::load_dir(&dir) {
            Ok(catalog) => {
                println!(
                    "{}: {} connector(s) valid",
                    dir.display(),
                    catalog.iter().count()
                );
                ExitCode::SUCCESS
            }
            Err(diags) => {
                for d in diags {
                    println!("{d}");
                }
                ExitCode::from(1)
            }
        };
    }
    telemetry::init(&settings);
    actix_web::rt::System::new().block_on(async move {
        match run(cli.command, settings).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

async fn run(command: Command, settings: Settings) -> Result<(), String> {
    match command {
        Command::Serve => {
            let app = Application::build(settings)
                .await
                .map_err(|e| e.to_string())?;
            tracing::info!(
                port = app.port(),
                database = %app.services().settings().database_url_redacted(),
                "switchboard listening"
            );
            app.run_until_stopped().await.map_err(|e| e.to_string())
        }
        Command::Migrate => {
            let services = Services::build(settings).map_err(|e| e.to_string())?;
            let applied = services.migrate().await.map_err(|e| e.to_string())?;
            eprintln!("{} migration(s) applied", applied.len());
            Ok(())
        }
        Command::Tenant {
            command: TenantCommand::Create { name },
        } => {
            let services = Services::build(settings).map_err(|e| e.to_string())?;
            services.migrate().await.map_err(|e| e.to_string())?;
            let created = services
                .keys
                .create_tenant(&name)
                .await
                .map_err(|e| e.to_string())?;
            println!(
                "{}",
                serde_json::to_string(&created).map_err(|e| e.to_string())?
            );
            Ok(())
        }
        Command::Audit {
            command: AuditCommand::Export { since },
        } => {
            let since = switchboard_service::audit::parse_time("--since", &since)
                .map_err(|e| e.to_string())?;
            let services = Services::build(settings).map_err(|e| e.to_string())?;
            services.migrate().await.map_err(|e| e.to_string())?;
            let mut out = std::io::stdout().lock();
            let mut write_err = None;
            services
                .audit
                .export(since, |line| {
                    use std::io::Write;
                    if write_err.is_none() {
                        if let Err(e) = writeln!(out, "{line}") {
                            write_err = Some(e);
                        }
                    }
                })
                .await
                .map_err(|e| e.to_string())?;
            write_err.map_or(Ok(()), |e| Err(e.to_string()))
        }
        Command::Audit {
            command: AuditCommand::Purge,
        } => {
            let services = Services::build(settings).map_err(|e| e.to_string())?;
            services.migrate().await.map_err(|e| e.to_string())?;
            let n = services
                .audit
                .purge(switchboard_core::now_ms())
                .await
                .map_err(|e| e.to_string())?;
            eprintln!("{n} audit record(s) purged");
            Ok(())
        }
        Command::Keys { command } => keys(command, settings).await,
        Command::Connectors { .. } => Ok(()),
    }
}

/// `switchboard keys rotate|status|prune`. JSON reports on stdout; a ring to deploy (when it
/// comes from SWITCHBOARD__SECRETS__KEY) on stdout as well, since the operator asked for it.
async fn keys(command: KeysCommand, settings: Settings) -> Result<(), String> {
    use switchboard_service::rotation::{KeySource, RotateOptions};
    let reload = settings.secrets.reload_interval();
    let services = Services::build(settings).map_err(|e| e.to_string())?;
    services.migrate().await.map_err(|e| e.to_string())?;
    services.check_key_ring().await.map_err(|e| e.to_string())?;
    let custody = services.custody();
    let ring = services.key_ring();
    let publish = |next: switchboard_crypto::KeyRing| -> Result<(), String> {
        match &custody.source {
            KeySource::File(path) => next.save(path).map_err(|e| e.to_string()),
            KeySource::Inline => {
                print!("{}", next.to_document().as_str());
                Ok(())
            }
        }
    };
    let json = |v: &serde_json::Value| println!("{v}");
    match command {
        KeysCommand::Status => {
            json(&custody.status().await.map_err(|e| e.to_string())?);
            Ok(())
        }
        KeysCommand::Prune => {
            let (pruned, removed) = custody.prune().await.map_err(|e| e.to_string())?;
            let primary = pruned.primary_kid();
            publish(pruned)?;
            eprintln!("removed key(s) {removed:?}; primary {primary:?}");
            if let KeySource::File(_) = custody.source {
                json(&serde_json::json!({ "primary": primary, "removed": removed }));
            }
            Ok(())
        }
        KeysCommand::Rotate(RotateArgs {
            stage,
            promote,
            reencrypt_only,
            batch_size,
            wait_ms,
            pause_ms,
        }) => {
            let opts = RotateOptions {
                batch_size,
                reload_wait: wait_ms
                    .map(std::time::Duration::from_millis)
                    .unwrap_or(reload * 2 + std::time::Duration::from_millis(500)),
                pause: std::time::Duration::from_millis(pause_ms),
            };
            if stage {
                let (next, kid) = ring.with_new_key();
                publish(next)?;
                eprintln!(
                    "added key {kid:?} (not primary); deploy it everywhere, then --promote {kid}"
                );
                return Ok(());
            }
            if let Some(kid) = promote {
                let next = ring.with_primary(&kid).map_err(|e| e.to_string())?;
                publish(next)?;
                eprintln!("key {kid:?} is primary; deploy it everywhere, then --reencrypt-only");
                return Ok(());
            }
            let report = if reencrypt_only {
                custody.reencrypt(&opts).await
            } else {
                custody.rotate(&opts).await
            }
            .map_err(|e| e.to_string())?;
            json(&serde_json::to_value(&report).map_err(|e| e.to_string())?);
            Ok(())
        }
    }
}
