//! Logging: tracing-subscriber, text or JSON, filter from `log.level` or `RUST_LOG`. Nothing
//! logged anywhere in Switchboard carries a secret, token, code, verifier, state or patient
//! data: log call sites name installs and codes, never values. Every line logged while a
//! request is served carries its `request_id` (the `request` span `switchboard_api::observe`
//! opens; in JSON as the `span`/`spans` fields).

use switchboard_config::{LogFormat, Settings};
use tracing_subscriber::EnvFilter;

pub fn init(settings: &Settings) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&settings.log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match settings.log.format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
