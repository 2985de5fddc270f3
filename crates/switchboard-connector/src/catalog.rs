//! Loaded connectors, compiled once at load: templates parsed, path templates parsed, param
//! regexes compiled. [`CompiledMethod`] and [`CompiledParam`] are THE model of a method: the
//! loader validates them and the engine validates calls and builds requests from them, so the
//! two can never disagree on a path, a pattern or a combination of params.

use std::collections::BTreeMap;
use std::ops::Deref;
use std::sync::Arc;

use regex::Regex;

use crate::model::{BodyDef, ConnectorDef, HttpVerb, MethodDef, Paging, ParamDef, ParamLocation};
use crate::path::{PathError, PathTemplate};
use crate::template::{Template, TemplateContext, TemplateError};
use crate::validate::{validate, Patterns};

/// A definition that failed validation when built in code (files go through the loader, which
/// reports `file:line` diagnostics instead).
#[derive(Debug, Clone, thiserror::Error)]
#[error("invalid connector definition: {}", problems.join("; "))]
pub struct InvalidConnector {
    /// `path: message` per problem, e.g. `methods[0].path: ...`.
    pub problems: Vec<String>,
}

/// A validated connector definition with its templates and regexes compiled.
///
/// Derefs to [`ConnectorDef`], so `connector.id`, `connector.settings`... read the definition.
#[derive(Debug)]
pub struct Connector {
    pub def: ConnectorDef,
    fhir_base: Template,
    headers: Vec<(String, Template)>,
    methods: Vec<CompiledMethod>,
}

/// A method with its path template parsed and param patterns compiled: what the engine runs.
#[derive(Debug)]
pub struct CompiledMethod {
    pub def: MethodDef,
    pub path: PathTemplate,
    params: Vec<CompiledParam>,
    /// The id of the connector declaring it (a metric label of its upstream calls).
    connector: String,
}

/// A param with its `pattern` compiled (anchored: it must match the whole value): what the
/// engine validates a caller's value against.
#[derive(Debug)]
pub struct CompiledParam {
    pub def: ParamDef,
    pub pattern: Option<Regex>,
}

impl Connector {
    /// Validate and compile a definition.
    pub fn new(def: ConnectorDef) -> Result<Self, InvalidConnector> {
        let issues = validate(&def);
        if !issues.is_empty() {
            return Err(InvalidConnector {
                problems: issues.iter().map(ToString::to_string).collect(),
            });
        }
        Self::compile(def, &mut Patterns::default())
    }

    /// Compile an already validated definition. Errors can only come from a definition that
    /// skipped validation, so they are reported rather than trusted away. `patterns` holds the
    /// regexes compiled so far (of this connector and of the others loaded with it).
    pub(crate) fn compile(
        def: ConnectorDef,
        patterns: &mut Patterns,
    ) -> Result<Self, InvalidConnector> {
        let bad = |what: String| InvalidConnector {
            problems: vec![what],
        };
        let fhir_base =
            Template::parse(&def.fhir_base).map_err(|e| bad(format!("fhir_base: {e}")))?;
        let headers = def
            .headers
            .iter()
            .map(|(k, v)| {
                Template::parse(v)
                    .map(|t| (k.clone(), t))
                    .map_err(|e| bad(format!("headers.{k}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut methods = Vec::with_capacity(def.methods.len());
        for m in &def.methods {
            let path =
                PathTemplate::parse(&m.path).map_err(|e| bad(format!("{}.path: {e}", m.id)))?;
            let mut params = Vec::with_capacity(m.params.len());
            for p in &m.params {
                let pattern = match &p.pattern {
                    Some(src) => Some(
                        patterns
                            .get(src)
                            .map_err(|e| bad(format!("{}.{}.pattern: {e}", m.id, p.name)))?,
                    ),
                    None => None,
                };
                params.push(CompiledParam {
                    def: p.clone(),
                    pattern,
                });
            }
            methods.push(CompiledMethod {
                def: m.clone(),
                path,
                params,
                connector: def.id.clone(),
            });
        }
        Ok(Self {
            def,
            fhir_base,
            headers,
            methods,
        })
    }

    pub fn id(&self) -> &str {
        &self.def.id
    }

    /// The method declared under `id`.
    pub fn method(&self, id: &str) -> Option<&CompiledMethod> {
        self.methods.iter().find(|m| m.def.id == id)
    }

    /// All methods, in file order.
    pub fn methods(&self) -> &[CompiledMethod] {
        &self.methods
    }

    /// Render the FHIR base for merged settings, with the trailing `/` the model promises, so
    /// that relative method paths can be appended by concatenation.
    pub fn render_fhir_base(
        &self,
        settings: &BTreeMap<String, String>,
    ) -> Result<String, TemplateError> {
        let ctx = TemplateContext {
            settings: settings.clone(),
            fhir_base: None,
            redirect_uri: None,
        };
        let mut base = self.fhir_base.render(&ctx)?;
        if !base.ends_with('/') {
            base.push('/');
        }
        Ok(base)
    }

    /// The context every other template renders against: the merged settings plus the rendered
    /// FHIR base (`redirect_uri` is added by the auth code when building token requests).
    pub fn context(
        &self,
        settings: BTreeMap<String, String>,
    ) -> Result<TemplateContext, TemplateError> {
        let base = self.render_fhir_base(&settings)?;
        Ok(TemplateContext::new(settings).with_fhir_base(base))
    }

    /// Render the static headers (name, value), sorted by name. The only rendering of connector
    /// headers: the engine turns these into wire headers once per prepared install.
    pub fn render_headers(
        &self,
        ctx: &TemplateContext,
    ) -> Result<Vec<(String, String)>, TemplateError> {
        self.headers
            .iter()
            .map(|(k, t)| t.render(ctx).map(|v| (k.clone(), v)))
            .collect()
    }
}

impl Connector {
    /// The `[discovery]` headers rendered for one install (empty without `[discovery]`).
    pub fn render_discovery_headers(
        &self,
        ctx: &TemplateContext,
    ) -> Result<Vec<(String, String)>, TemplateError> {
        let Some(d) = &self.def.discovery else {
            return Ok(Vec::new());
        };
        d.headers
            .iter()
            .map(|(k, v)| crate::template::render_str(v, ctx).map(|v| (k.clone(), v)))
            .collect()
    }

    /// The `search_params` rendered for one install.
    pub fn render_search_params(
        &self,
        ctx: &TemplateContext,
    ) -> Result<Vec<(String, String)>, TemplateError> {
        self.def
            .search_params
            .iter()
            .map(|(k, v)| crate::template::render_str(v, ctx).map(|v| (k.clone(), v)))
            .collect()
    }
}

impl Deref for Connector {
    type Target = ConnectorDef;

    fn deref(&self) -> &ConnectorDef {
        &self.def
    }
}

impl CompiledMethod {
    pub fn id(&self) -> &str {
        &self.def.id
    }

    /// The id of the connector this method belongs to.
    pub fn connector(&self) -> &str {
        &self.connector
    }

    pub fn verb(&self) -> HttpVerb {
        self.def.verb
    }

    pub fn paging(&self) -> Paging {
        self.def.paging
    }

    /// `call`, or `bulk_export` (an asynchronous `$export` kick-off).
    pub fn kind(&self) -> crate::model::MethodKind {
        self.def.kind
    }

    /// The FHIR resource a write method takes as its body (`None`: no resource body).
    pub fn body(&self) -> Option<&BodyDef> {
        self.def.body.as_ref()
    }

    /// Whether a create sends `If-None-Exist` from the body's first identifier.
    pub fn conditional_identifier(&self) -> bool {
        self.def.conditional_identifier
    }

    /// The param the caller names `name`.
    pub fn param(&self, name: &str) -> Option<&CompiledParam> {
        self.params.iter().find(|p| p.def.name == name)
    }

    /// All params, in file order.
    pub fn params(&self) -> &[CompiledParam] {
        &self.params
    }

    /// Render the path with each placeholder's value (`value_of(name)`) percent-encoded as one
    /// segment; relative to the FHIR base. See [`PathTemplate::render`].
    pub fn render_path<'v>(
        &self,
        value_of: impl Fn(&str) -> Option<&'v str>,
    ) -> Result<String, PathError> {
        self.path.render(value_of)
    }

    /// Whether the params the caller gave (`provided(name)` says whether `name` was given)
    /// satisfy `require_one_of`: every param of at least one combination, or no combinations.
    pub fn satisfies_required_combinations(&self, provided: impl Fn(&str) -> bool) -> bool {
        self.def.require_one_of.is_empty()
            || self
                .def
                .require_one_of
                .iter()
                .any(|set| set.iter().all(|name| provided(name)))
    }

    /// Human-readable list of the accepted combinations, for `invalid_params` details:
    /// `[_id] or [identifier] or [given, family, birthdate]`.
    pub fn required_combinations_hint(&self) -> String {
        self.def
            .require_one_of
            .iter()
            .map(|set| format!("[{}]", set.join(", ")))
            .collect::<Vec<_>>()
            .join(" or ")
    }
}

impl CompiledParam {
    /// The name the caller uses.
    pub fn name(&self) -> &str {
        &self.def.name
    }

    /// The name sent upstream.
    pub fn wire_name(&self) -> &str {
        self.def.wire_name()
    }

    pub fn location(&self) -> ParamLocation {
        self.def.location
    }

    /// Whether a call must supply it: declared `required`, or a path param (the loader insists
    /// that those are declared required; this holds even for a definition that skipped it).
    pub fn is_required(&self) -> bool {
        self.def.required || self.def.location == ParamLocation::Path
    }

    /// Whether a (string form of a) value passes the param's `pattern`; true without one.
    pub fn matches_pattern(&self, value: &str) -> bool {
        self.pattern.as_ref().is_none_or(|re| re.is_match(value))
    }
}

/// The loaded connectors by id. Cheap to clone and share (`Arc` per connector).
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    by_id: BTreeMap<String, Arc<Connector>>,
}

impl Catalog {
    pub fn new() -> Self {
        Self::default()
    }

    /// Add a connector, returning the one it replaces (the loader reports duplicate ids as
    /// diagnostics before it gets here).
    pub fn insert(&mut self, connector: Connector) -> Option<Arc<Connector>> {
        self.by_id
            .insert(connector.def.id.clone(), Arc::new(connector))
    }

    pub fn get(&self, id: &str) -> Option<Arc<Connector>> {
        self.by_id.get(id).cloned()
    }

    /// Connectors in id order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Connector>> + '_ {
        self.by_id.values()
    }

    pub fn ids(&self) -> impl Iterator<Item = &str> + '_ {
        self.by_id.keys().map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

impl FromIterator<Connector> for Catalog {
    fn from_iter<I: IntoIterator<Item = Connector>>(iter: I) -> Self {
        let mut c = Self::new();
        for connector in iter {
            c.insert(connector);
        }
        c
    }
}
