//! Connector definitions and their one compiled model: the file format (`model`), templates
//! over settings, setting normalisers, loading and validating `connectors/*.toml` with
//! `file:line` diagnostics, compiling methods for the engine, and the generated JSON Schema.
//! Pure: no network, no database.
//!
//! How the other crates use it:
//! - **Loading**: [`load_dir`] returns a [`Catalog`] or every problem as a [`Diagnostic`]
//!   (`file:line: message`); `switchboard connectors validate` prints them. [`load_file`] /
//!   [`load_str`] do one file.
//! - **Includes**: a file's `[[include]]` takes methods from a library file
//!   (`connectors/_fhir/us_core.toml`, [`LibraryDef`]) and narrows them ([`NarrowDef`],
//!   [`ParamOverride`]); the loader resolves them, relative to the including file, before
//!   validation and appends them after the file's own methods. [`Connector::new`] does not
//!   resolve includes (it has no file to resolve them against).
//! - **The catalog**: [`Catalog::get`] gives an `Arc<`[`Connector`]`>`: the validated
//!   [`ConnectorDef`] (`connector.def`, also reachable through `Deref`) with its templates parsed
//!   and param regexes compiled once. [`Connector::method`] -> [`CompiledMethod`] is the single
//!   model of a method call: the engine validates a call's params against its
//!   [`CompiledParam`]s (`matches_pattern`) and `satisfies_required_combinations`, and builds
//!   the request with its `render_path` (one percent-encoded segment per value). Nothing
//!   re-parses a [`MethodDef`] per call.
//! - **Install context**: [`Connector::context`] (merged settings + rendered FHIR base) and
//!   [`Connector::render_headers`], the one rendering of the static headers.
//! - **Reserved headers**: [`RESERVED_HEADERS`] / [`is_reserved_header`], refused by the
//!   validator at load and again by the engine when it builds a request.
//! - **Settings**: [`SettingDef::validate_value`] (normalise, then type-check a submitted value),
//!   [`merge_settings`] (defaults < setup < install overrides), and, since required-ness is
//!   per auth type, [`settings_used_by_auth`] / [`missing_for_auth`].
//! - **Templates**: [`Template`] (`{{settings.KEY}}`, `{{fhir_base}}`, `{{redirect_uri}}`),
//!   [`render_str`] for one-off rendering; errors name setting keys, never values.
//! - **API views**: [`summary`] and [`public_view`] for `GET /v1/connectors[/{id}]`.
//! - **Schema**: [`json_schema`], committed as `connectors/connector.schema.json`.

pub mod catalog;
mod include;
pub mod load;
pub mod model;
pub mod normalize;
pub mod path;
pub mod schema;
pub mod settings;
mod shape;
mod spanned;
pub mod template;
#[cfg(test)]
mod tests_include;
#[cfg(test)]
mod tests_load;
mod validate;
pub mod view;

pub use catalog::{Catalog, CompiledMethod, CompiledParam, Connector, InvalidConnector};
pub use load::{load_dir, load_file, load_str, Diagnostic};
pub use model::*;
pub use path::{PathError, PathSegment, PathTemplate};
pub use schema::{json_schema, json_schema_pretty};
pub use settings::{
    check_url, merge_settings, missing_for_auth, settings_used_by_auth, MAX_SETTING_LEN,
};
pub use template::{render_str, Filter, Template, TemplateContext, TemplateError, Variable};
pub use view::{method_call_schema, method_input_schema, public_view, summary};
