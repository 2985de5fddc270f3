//! Semantic checks of a connector definition: everything the types alone cannot say (ids,
//! templates and the variables they may use, URLs, path placeholders, regexes, auth coherence).
//! Works on the typed model and reports field paths (`methods[1].path`); the loader turns those
//! into line numbers, and [`crate::Connector::new`] reports them as they are.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::LazyLock;

use regex::Regex;
use serde_json::Value;

use crate::model::{
    is_reserved_header, AuthDef, ClientAuth, ConnectorDef, HttpVerb, MethodDef, MethodKind,
    Normalizer, ParamDef, ParamLocation, ParamType, SettingDef, SettingType,
};
use crate::path::PathTemplate;
use crate::settings::{check_url, sample_value};
use crate::template::{Template, TemplateContext, Variable};

fn re(src: &str) -> Regex {
    Regex::new(src).expect("static regex")
}

static CONNECTOR_ID: LazyLock<Regex> = LazyLock::new(|| re(r"^[a-z][a-z0-9_]{0,31}$"));
static METHOD_ID: LazyLock<Regex> = LazyLock::new(|| re(r"^[a-z][a-z0-9_]{0,63}$"));
static SETTING_KEY: LazyLock<Regex> = LazyLock::new(|| re(r"^[a-z][a-z0-9_]{0,63}$"));
/// FHIR search parameter names: `_id`, `address-city`, `_has:CareTeam:participant:member`.
static PARAM_NAME: LazyLock<Regex> = LazyLock::new(|| re(r"^[A-Za-z_][A-Za-z0-9_.:\-]{0,127}$"));
/// RFC 9110 `token`: what an HTTP header name may be.
static HEADER_NAME: LazyLock<Regex> = LazyLock::new(|| re(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,128}$"));
static SEMVER: LazyLock<Regex> = LazyLock::new(|| {
    re(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(-[0-9A-Za-z.\-]+)?(\+[0-9A-Za-z.\-]+)?$")
});

/// Authorize parameters the host sets itself; a connector overriding them would break PKCE,
/// `state` or the shared callback.
const RESERVED_AUTHORIZE_PARAMS: &[&str] = &[
    "response_type",
    "client_id",
    "redirect_uri",
    "state",
    "code_challenge",
    "code_challenge_method",
    "scope",
];
/// Token parameters the host sets itself (`redirect_uri` is allowed: Canvas wants it on refresh).
const RESERVED_TOKEN_PARAMS: &[&str] = &[
    "grant_type",
    "code",
    "code_verifier",
    "refresh_token",
    "client_id",
    "client_secret",
    "client_assertion",
    "client_assertion_type",
    "scope",
];

const SAMPLE_FHIR_BASE: &str = "https://example.invalid/fhir/";
const SAMPLE_REDIRECT_URI: &str = "https://switchboard.invalid/connector/callback";

/// A location inside a connector file: `methods[1].params[0].name`.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct FieldPath(Vec<Segment>);

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Segment {
    Key(String),
    Index(usize),
}

impl FieldPath {
    pub(crate) fn root() -> Self {
        Self(Vec::new())
    }

    pub(crate) fn key(&self, key: &str) -> Self {
        let mut p = self.clone();
        p.0.push(Segment::Key(key.to_owned()));
        p
    }

    pub(crate) fn index(&self, i: usize) -> Self {
        let mut p = self.clone();
        p.0.push(Segment::Index(i));
        p
    }

    pub(crate) fn segments(&self) -> &[Segment] {
        &self.0
    }

    pub(crate) fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    pub(crate) fn starts_with(&self, prefix: &FieldPath) -> bool {
        self.0.starts_with(&prefix.0)
    }

    /// The path up to and including the last array index, i.e. the enclosing array element
    /// (`methods[1].params[0]` for `methods[1].params[0].in`), or the path itself when it has no
    /// index.
    pub(crate) fn element(&self) -> FieldPath {
        match self.0.iter().rposition(|s| matches!(s, Segment::Index(_))) {
            Some(i) => FieldPath(self.0[..=i].to_vec()),
            None => self.clone(),
        }
    }

    /// Parse a `FieldPath`-like string for hand-written call sites (`auth[0].client_secret`).
    fn parse(spec: &str) -> Self {
        let mut p = Self::root();
        for part in spec.split('.') {
            let (name, rest) = match part.find('[') {
                Some(i) => (&part[..i], &part[i..]),
                None => (part, ""),
            };
            if !name.is_empty() {
                p = p.key(name);
            }
            for idx in rest.split('[').filter(|s| !s.is_empty()) {
                if let Ok(i) = idx.trim_end_matches(']').parse() {
                    p = p.index(i);
                }
            }
        }
        p
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Segment::Index(n) => write!(f, "[{n}]")?,
                Segment::Key(k) => {
                    if i > 0 {
                        f.write_str(".")?;
                    }
                    let bare = !k.is_empty()
                        && k.chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
                    if bare {
                        f.write_str(k)?;
                    } else {
                        write!(f, "{k:?}")?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// One problem found in a definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Issue {
    pub path: FieldPath,
    pub message: String,
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_root() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Where a template is used decides which variables it may contain.
#[derive(Clone, Copy)]
struct Use {
    fhir_base: bool,
    redirect_uri: bool,
    /// Secret settings may only flow into request bodies and headers sent to the provider,
    /// never into URLs (logged, and sent to browsers) or scopes.
    secrets: bool,
    /// Rendered with sample values, the result must be an absolute http(s) URL.
    url: bool,
    /// The template must be made of secret settings only (client secret, bearer token): a
    /// literal here would be a credential committed to the repository.
    secret_only: bool,
}

const PLAIN: Use = Use {
    fhir_base: true,
    redirect_uri: false,
    secrets: false,
    url: false,
    secret_only: false,
};
const URL: Use = Use { url: true, ..PLAIN };
const SECRET_ONLY: Use = Use {
    secrets: true,
    secret_only: true,
    fhir_base: false,
    ..PLAIN
};

struct Checker<'a> {
    def: &'a ConnectorDef,
    settings: BTreeMap<&'a str, &'a SettingDef>,
    sample: TemplateContext,
    issues: Vec<Issue>,
    /// Each distinct param pattern compiled once (the US Core include repeats its id pattern).
    patterns: Patterns,
}

/// Check a definition. Returns every problem found, in file order of the checked fields.
pub(crate) fn validate(def: &ConnectorDef) -> Vec<Issue> {
    let mut settings = BTreeMap::new();
    for s in &def.settings {
        settings.entry(s.key.as_str()).or_insert(s);
    }
    // First declaration wins, as for `settings` above (a duplicate is reported on its own).
    let mut sample_settings = BTreeMap::new();
    for s in &def.settings {
        sample_settings
            .entry(s.key.clone())
            .or_insert_with(|| sample_value(s));
    }
    let mut c = Checker {
        def,
        settings,
        sample: TemplateContext::new(sample_settings),
        issues: Vec::new(),
        patterns: Patterns::default(),
    };
    c.sample.redirect_uri = Some(SAMPLE_REDIRECT_URI.to_owned());
    c.top_level();
    c.settings_fields();
    c.fhir_base_and_headers();
    c.auth_entries();
    c.methods();
    c.limits();
    c.issues
}

impl Checker<'_> {
    fn issue(&mut self, path: FieldPath, message: impl Into<String>) {
        self.issues.push(Issue {
            path,
            message: message.into(),
        });
    }

    /// `[limits]`: each declared rate is at least 1 (0 would block every call) and within what a
    /// token bucket can express.
    fn limits(&mut self) {
        let Some(limits) = &self.def.limits else {
            return;
        };
        for (key, value, max) in [
            (
                "token_requests_per_minute",
                limits.token_requests_per_minute,
                1_000_000,
            ),
            ("requests_per_second", limits.requests_per_second, 100_000),
        ] {
            if let Some(v) = value.filter(|v| *v == 0 || *v > max) {
                self.issue(
                    FieldPath::root().key("limits").key(key),
                    format!("must be between 1 and {max} (got {v})"),
                );
            }
        }
    }

    fn top_level(&mut self) {
        let def = self.def;
        if !CONNECTOR_ID.is_match(&def.id) {
            self.issue(
                FieldPath::parse("id"),
                format!(
                    "invalid connector id `{}`: must match [a-z][a-z0-9_]{{0,31}}",
                    def.id
                ),
            );
        }
        if def.name.trim().is_empty() {
            self.issue(FieldPath::parse("name"), "must not be empty");
        }
        if !SEMVER.is_match(&def.version) {
            self.issue(
                FieldPath::parse("version"),
                format!("`{}` is not a semantic version (e.g. 1.0.0)", def.version),
            );
        }
    }

    fn settings_fields(&mut self) {
        let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
        for (i, s) in self.def.settings.iter().enumerate() {
            let at = FieldPath::root().key("settings").index(i);
            if !SETTING_KEY.is_match(&s.key) {
                self.issue(
                    at.key("key"),
                    format!(
                        "invalid setting key `{}`: must match [a-z][a-z0-9_]{{0,63}}",
                        s.key
                    ),
                );
            }
            if let Some(first) = seen.insert(&s.key, i) {
                self.issue(
                    at.key("key"),
                    format!(
                        "duplicate setting key `{}` (first declared at settings[{first}])",
                        s.key
                    ),
                );
                seen.insert(&s.key, first);
            }
            if s.label.trim().is_empty() {
                self.issue(at.key("label"), "must not be empty");
            }
            match s.kind {
                SettingType::Enum if s.options.is_empty() => {
                    self.issue(at.key("type"), "`enum` setting declares no `options`")
                }
                SettingType::Enum => {
                    let mut opts = BTreeSet::new();
                    for o in &s.options {
                        if !opts.insert(o) {
                            self.issue(at.key("options"), format!("duplicate option `{o}`"));
                        }
                    }
                }
                _ if !s.options.is_empty() => self.issue(
                    at.key("options"),
                    "`options` only apply to settings with type = \"enum\"",
                ),
                _ => {}
            }
            if matches!(
                s.normalize,
                Some(Normalizer::EpicEndpoint | Normalizer::TrailingSlash)
            ) && !matches!(s.kind, SettingType::Url | SettingType::String)
            {
                self.issue(
                    at.key("normalize"),
                    "this normaliser only applies to url and string settings",
                );
            }
            if let Some(default) = &s.default {
                if s.secret {
                    self.issue(
                        at.key("default"),
                        "a secret setting must not have a default (secrets do not belong in connector files)",
                    );
                } else if let Err(e) = s.validate_value(&Value::String(default.clone())) {
                    self.issue(at.key("default"), format!("invalid default: {e}"));
                }
            }
        }
    }

    fn fhir_base_and_headers(&mut self) {
        let def = self.def;
        let fhir_use = Use {
            fhir_base: false,
            ..URL
        };
        // Render the real FHIR base with sample values so that templates using `{{fhir_base}}`
        // are checked against something realistic.
        if let Some(t) = self.template(FieldPath::parse("fhir_base"), &def.fhir_base, fhir_use) {
            let base = t
                .render(&self.sample)
                .ok()
                .filter(|b| check_url(b).is_ok())
                .unwrap_or_else(|| SAMPLE_FHIR_BASE.to_owned());
            self.sample.fhir_base = Some(base);
        } else {
            self.sample.fhir_base = Some(SAMPLE_FHIR_BASE.to_owned());
        }
        let header_use = Use {
            secrets: true,
            ..PLAIN
        };
        for (name, value) in &def.headers {
            let at = FieldPath::root().key("headers").key(name);
            self.header_name(&at, name);
            self.template(at, value, header_use);
        }
        if let Some(d) = &def.discovery {
            for (name, value) in &d.headers {
                let at = FieldPath::root().key("discovery").key("headers").key(name);
                self.header_name(&at, name);
                self.template(at, value, header_use);
            }
        }
        for (name, value) in &def.search_params {
            let at = FieldPath::root().key("search_params").key(name);
            if name.is_empty()
                || name
                    .chars()
                    .any(|c| c.is_whitespace() || "&=#?".contains(c))
            {
                self.issue(
                    at.clone(),
                    format!("`{name}` is not a valid query parameter name"),
                );
            }
            self.template(at, value, PLAIN);
        }
    }

    fn header_name(&mut self, at: &FieldPath, name: &str) {
        if !HEADER_NAME.is_match(name) {
            self.issue(
                at.clone(),
                format!("`{name}` is not a valid HTTP header name"),
            );
        } else if is_reserved_header(name) {
            self.issue(
                at.clone(),
                format!("header `{name}` is set by the host and cannot be declared"),
            );
        }
    }

    fn auth_entries(&mut self) {
        let def = self.def;
        if def.auth.is_empty() {
            self.issue(
                FieldPath::parse("auth"),
                "declare at least one auth type ([[auth]] with type = ...)",
            );
        }
        let mut seen = BTreeMap::new();
        for (i, auth) in def.auth.iter().enumerate() {
            let at = FieldPath::root().key("auth").index(i);
            if let Some(first) = seen.insert(auth.kind().as_str(), i) {
                self.issue(
                    at.key("type"),
                    format!(
                        "duplicate auth type `{}` (first declared at auth[{first}])",
                        auth.kind().as_str()
                    ),
                );
                seen.insert(auth.kind().as_str(), first);
            }
            match auth {
                AuthDef::Oauth2AuthorizationCode(a) => {
                    if let Some(u) = &a.authorize_url {
                        self.template(at.key("authorize_url"), u, URL);
                    }
                    if let Some(u) = &a.token_url {
                        self.template(at.key("token_url"), u, URL);
                    }
                    self.template(at.key("client_id"), &a.client_id, PLAIN);
                    self.client_secret(&at, a.client_auth, a.client_secret.as_deref(), true);
                    self.template(at.key("scopes"), &a.scopes, PLAIN);
                    for (k, v) in &a.authorize_params {
                        let p = at.key("authorize_params").key(k);
                        if RESERVED_AUTHORIZE_PARAMS.contains(&k.as_str()) {
                            self.issue(
                                p.clone(),
                                format!("authorize parameter `{k}` is set by the host"),
                            );
                        }
                        self.template(p, v, PLAIN);
                    }
                    self.token_params(&at, &a.token_params, true);
                    if let Some(iss) = &a.issuer {
                        self.template(at.key("issuer"), iss, URL);
                    }
                    if let Some(r) = &a.revocation_url {
                        self.template(at.key("revocation_url"), r, URL);
                    }
                }
                AuthDef::Oauth2ClientCredentials(c) => {
                    if let Some(u) = &c.token_url {
                        self.template(at.key("token_url"), u, URL);
                    }
                    self.template(at.key("client_id"), &c.client_id, PLAIN);
                    self.client_secret(&at, c.client_auth, Some(&c.client_secret), false);
                    self.template(at.key("scopes"), &c.scopes, PLAIN);
                    self.token_params(&at, &c.token_params, false);
                    if let Some(r) = &c.revocation_url {
                        self.template(at.key("revocation_url"), r, URL);
                    }
                }
                AuthDef::StaticBearer(b) => {
                    self.template(at.key("token"), &b.token, SECRET_ONLY);
                }
                AuthDef::Oauth2BackendServices(b) => {
                    self.template(at.key("token_url"), &b.token_url, URL);
                    self.template(at.key("client_id"), &b.client_id, PLAIN);
                    self.template(at.key("scopes"), &b.scopes, PLAIN);
                    if let Some(a) = &b.audience {
                        self.template(at.key("audience"), a, URL);
                    }
                    self.token_params(&at, &b.token_params, false);
                    for k in b.token_params.keys() {
                        if matches!(k.as_str(), "client_assertion" | "client_assertion_type") {
                            self.issue(
                                at.key("token_params").key(k),
                                format!("token parameter `{k}` is set by the host"),
                            );
                        }
                    }
                    if let Some(r) = &b.revocation_url {
                        self.template(at.key("revocation_url"), r, URL);
                    }
                }
            }
            if auth.needs_discovery() && def.discovery.is_none() {
                self.issue(
                    at.key("token_url"),
                    "authorize_url and token_url may only be left out when the connector declares [discovery]",
                );
            }
        }
    }

    fn client_secret(
        &mut self,
        at: &FieldPath,
        client_auth: ClientAuth,
        secret: Option<&str>,
        public_allowed: bool,
    ) {
        match (client_auth, secret) {
            (ClientAuth::None, Some(_)) if public_allowed => self.issue(
                at.key("client_secret"),
                "client_auth = \"none\" (public client) must not declare a client_secret",
            ),
            // A public authorization-code client: PKCE only, no secret.
            (ClientAuth::None, None) if public_allowed => {}
            (ClientAuth::None, _) => self.issue(
                at.key("client_auth"),
                "client credentials need client authentication: use client_secret_basic or client_secret_post",
            ),
            (ClientAuth::ClientSecretBasic | ClientAuth::ClientSecretPost, None) => self.issue(
                at.key("client_auth"),
                format!(
                    "client_auth = \"{}\" needs a client_secret",
                    match client_auth {
                        ClientAuth::ClientSecretBasic => "client_secret_basic",
                        _ => "client_secret_post",
                    }
                ),
            ),
            (_, Some(s)) => {
                self.template(at.key("client_secret"), s, SECRET_ONLY);
            }
        }
    }

    fn token_params(
        &mut self,
        at: &FieldPath,
        params: &BTreeMap<String, String>,
        redirect_uri: bool,
    ) {
        let token_use = Use {
            redirect_uri,
            secrets: true,
            ..PLAIN
        };
        for (k, v) in params {
            let p = at.key("token_params").key(k);
            if RESERVED_TOKEN_PARAMS.contains(&k.as_str()) {
                self.issue(
                    p.clone(),
                    format!("token parameter `{k}` is set by the host"),
                );
            }
            self.template(p, v, token_use);
        }
    }

    /// Parse a template and check its variables against where it is used. Returns it when it
    /// parsed.
    fn template(&mut self, at: FieldPath, src: &str, usage: Use) -> Option<Template> {
        let t = match Template::parse(src) {
            Ok(t) => t,
            Err(e) => {
                self.issue(at, format!("invalid template: {e}"));
                return None;
            }
        };
        let mut ok = true;
        let mut secret_vars = 0;
        let mut reported = BTreeSet::new();
        for var in t.variables() {
            if !reported.insert(var.clone()) {
                continue;
            }
            match var {
                Variable::Setting(key) => match self.settings.get(key.as_str()) {
                    None => {
                        ok = false;
                        self.issue(
                            at.clone(),
                            format!("`{{{{settings.{key}}}}}` names no declared setting"),
                        );
                    }
                    Some(s) if s.secret => {
                        secret_vars += 1;
                        if !usage.secrets {
                            ok = false;
                            self.issue(
                                at.clone(),
                                format!(
                                    "secret setting `{key}` cannot be used here (it would end up in URLs, browser redirects or logs)"
                                ),
                            );
                        }
                    }
                    Some(_) if usage.secret_only => {
                        ok = false;
                        self.issue(
                            at.clone(),
                            format!(
                                "setting `{key}` is not secret: a credential must come from `secret = true` settings"
                            ),
                        );
                    }
                    Some(_) => {}
                },
                Variable::FhirBase if !usage.fhir_base => {
                    ok = false;
                    self.issue(at.clone(), "`{{fhir_base}}` cannot be used here");
                }
                Variable::RedirectUri if !usage.redirect_uri => {
                    ok = false;
                    self.issue(
                        at.clone(),
                        "`{{redirect_uri}}` is only available in token_params of oauth2_authorization_code",
                    );
                }
                Variable::FhirBase | Variable::RedirectUri => {}
            }
        }
        if usage.secret_only && ok && (secret_vars == 0 || t.has_literal_text()) {
            ok = false;
            self.issue(
                at.clone(),
                "must consist of secret settings only, e.g. \"{{settings.client_secret}}\" (credentials do not belong in connector files)",
            );
        }
        if usage.url && ok {
            match t.render(&self.sample) {
                Ok(rendered) => {
                    if let Err(e) = check_url(&rendered) {
                        self.issue(
                            at,
                            format!(
                                "invalid URL: with sample settings this renders to `{rendered}`, which {}",
                                e.replacen("must", "should", 1)
                            ),
                        );
                    }
                }
                Err(e) => self.issue(at, format!("cannot be rendered: {e}")),
            }
        }
        Some(t)
    }

    fn methods(&mut self) {
        let def = self.def;
        if def.methods.is_empty() {
            self.issue(FieldPath::parse("methods"), "declare at least one method");
        }
        let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
        for (i, m) in def.methods.iter().enumerate() {
            let at = FieldPath::root().key("methods").index(i);
            if !METHOD_ID.is_match(&m.id) {
                self.issue(
                    at.key("id"),
                    format!(
                        "invalid method id `{}`: must match [a-z][a-z0-9_]{{0,63}}",
                        m.id
                    ),
                );
            }
            if let Some(first) = seen.insert(&m.id, i) {
                self.issue(
                    at.key("id"),
                    format!(
                        "duplicate method id `{}` (first declared at methods[{first}])",
                        m.id
                    ),
                );
                seen.insert(&m.id, first);
            }
            if m.name.trim().is_empty() {
                self.issue(at.key("name"), "must not be empty");
            }
            self.method(&at, m);
        }
    }

    /// `body` and `conditional_identifier` of a write method.
    fn write_body(&mut self, at: &FieldPath, m: &MethodDef) {
        if let Some(body) = &m.body {
            if !matches!(m.verb, HttpVerb::Post | HttpVerb::Put | HttpVerb::Patch) {
                self.issue(
                    at.key("body"),
                    format!("{} requests carry no body", m.verb.as_str()),
                );
            }
            if m.params.iter().any(|p| p.location == ParamLocation::Body) {
                self.issue(
                    at.key("body"),
                    "a method with `body` cannot also have in = \"body\" params",
                );
            }
            let valid_type = body.resource_type.len() <= 64
                && body
                    .resource_type
                    .starts_with(|c: char| c.is_ascii_uppercase())
                && body
                    .resource_type
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric());
            if !valid_type {
                self.issue(
                    at.key("body").key("resource_type"),
                    "must be a FHIR resource type name, e.g. Observation",
                );
            }
        }
        if m.conditional_identifier && (m.body.is_none() || m.verb != HttpVerb::Post) {
            self.issue(
                at.key("conditional_identifier"),
                "conditional create needs verb = \"POST\" and a `body`",
            );
        }
    }

    /// `kind = "bulk_export"`: a GET of the `$export` endpoint its `level` names, no paging,
    /// no body; `level` only there.
    fn bulk_export(&mut self, at: &FieldPath, m: &MethodDef) {
        match (m.kind, m.level) {
            (MethodKind::Call, None) => {}
            (MethodKind::Call, Some(_)) => self.issue(
                at.key("level"),
                "`level` is only for kind = \"bulk_export\"",
            ),
            (MethodKind::BulkExport, None) => self.issue(
                at.key("level"),
                "a bulk_export method needs `level` (\"patient\", \"group\" or \"system\")",
            ),
            (MethodKind::BulkExport, Some(level)) => {
                if m.verb != HttpVerb::Get {
                    self.issue(at.key("verb"), "a bulk_export kick-off is a GET");
                }
                if m.paging != crate::model::Paging::None || m.body.is_some() {
                    self.issue(
                        at.key("kind"),
                        "a bulk_export method has no paging and no body",
                    );
                }
                if !level.matches_path(&m.path) {
                    self.issue(
                        at.key("path"),
                        "the path of a bulk_export method is `$export` (system), `Patient/$export` (patient) or `Group/{id}/$export` (group), as its level says",
                    );
                }
            }
        }
    }

    fn method(&mut self, at: &FieldPath, m: &MethodDef) {
        let mut names: BTreeMap<&str, usize> = BTreeMap::new();
        let mut wire: BTreeMap<(String, String), usize> = BTreeMap::new();
        for (j, p) in m.params.iter().enumerate() {
            let pat = at.key("params").index(j);
            if let Some(first) = names.insert(&p.name, j) {
                self.issue(
                    pat.key("name"),
                    format!(
                        "duplicate param name `{}` (first declared at params[{first}])",
                        p.name
                    ),
                );
                names.insert(&p.name, first);
            } else {
                // Header names are case-insensitive on the wire.
                let wire_name = match p.location {
                    ParamLocation::Header => p.wire_name().to_ascii_lowercase(),
                    _ => p.wire_name().to_owned(),
                };
                if let Some(first) = wire.insert((format!("{:?}", p.location), wire_name), j) {
                    self.issue(
                        pat.key("upstream_name"),
                        format!("params[{first}] already sends `{}` upstream", p.wire_name()),
                    );
                }
            }
            self.param(&pat, m, p);
        }

        self.write_body(at, m);
        self.bulk_export(at, m);
        match PathTemplate::parse(&m.path) {
            Err(e) => self.issue(at.key("path"), e.to_string()),
            Ok(path) => {
                let placeholders: BTreeSet<&str> = path.params().collect();
                for name in &placeholders {
                    let declared = m
                        .params
                        .iter()
                        .any(|p| p.name == *name && p.location == ParamLocation::Path);
                    if !declared {
                        self.issue(
                            at.key("path"),
                            format!(
                                "placeholder `{{{name}}}` is not declared as a param with in = \"path\""
                            ),
                        );
                    }
                }
                for (j, p) in m.params.iter().enumerate() {
                    if p.location == ParamLocation::Path && !placeholders.contains(p.name.as_str())
                    {
                        self.issue(
                            at.key("params").index(j).key("name"),
                            format!(
                                "path param `{}` does not appear in path `{}`",
                                p.name, m.path
                            ),
                        );
                    }
                }
            }
        }

        for (k, set) in m.require_one_of.iter().enumerate() {
            let sat = at.key("require_one_of").index(k);
            if set.is_empty() {
                self.issue(sat.clone(), "an empty combination is always satisfied");
            }
            for (n, name) in set.iter().enumerate() {
                if m.param(name).is_none() {
                    self.issue(
                        sat.index(n),
                        format!("require_one_of names unknown param `{name}`"),
                    );
                }
            }
        }
    }

    fn param(&mut self, at: &FieldPath, m: &MethodDef, p: &ParamDef) {
        if !PARAM_NAME.is_match(&p.name) {
            self.issue(at.key("name"), format!("invalid param name `{}`", p.name));
        }
        if let Some(up) = &p.upstream_name {
            if !PARAM_NAME.is_match(up) {
                self.issue(
                    at.key("upstream_name"),
                    format!("invalid upstream name `{up}`"),
                );
            }
        }
        match p.location {
            ParamLocation::Path => {
                if !p.required {
                    self.issue(
                        at.key("required"),
                        "path params must be declared required = true",
                    );
                }
                if p.repeated {
                    self.issue(at.key("repeated"), "path params cannot be repeated");
                }
            }
            ParamLocation::Header => {
                let name = p.wire_name().to_owned();
                self.header_name(&at.key("name"), &name);
            }
            ParamLocation::Body => {
                if !matches!(m.verb, HttpVerb::Post | HttpVerb::Put | HttpVerb::Patch) {
                    self.issue(
                        at.key("in"),
                        format!("{} requests carry no body", m.verb.as_str()),
                    );
                }
            }
            ParamLocation::Query => {}
        }
        if p.kind == ParamType::Json && p.location != ParamLocation::Body {
            self.issue(at.key("type"), "type = \"json\" is only for in = \"body\"");
        }
        if p.minimum.is_some() || p.maximum.is_some() {
            if !matches!(p.kind, ParamType::Integer | ParamType::Number) {
                self.issue(
                    at.key(if p.minimum.is_some() {
                        "minimum"
                    } else {
                        "maximum"
                    }),
                    "minimum/maximum only apply to integer and number params",
                );
            }
            if let (Some(lo), Some(hi)) = (p.minimum, p.maximum) {
                if lo > hi {
                    self.issue(
                        at.key("minimum"),
                        format!("minimum {lo} is greater than maximum {hi}"),
                    );
                }
            }
        }
        let compiled = p
            .pattern
            .as_deref()
            .map(|src| (src, self.patterns.get(src)));
        if let Some((_, Err(e))) = &compiled {
            self.issue(at.key("pattern"), format!("invalid regex: {}", one_line(e)));
        }
        let mut seen = BTreeSet::new();
        for v in &p.allowed {
            if !seen.insert(v) {
                self.issue(at.key("enum"), format!("duplicate value `{v}`"));
            }
            let type_ok = match p.kind {
                ParamType::Integer => v.parse::<i64>().is_ok(),
                ParamType::Number => v.parse::<f64>().is_ok(),
                ParamType::Boolean => v == "true" || v == "false",
                _ => true,
            };
            if !type_ok {
                self.issue(
                    at.key("enum"),
                    format!("value `{v}` does not fit the param type"),
                );
            }
            if let Some((src, Ok(re))) = &compiled {
                if !re.is_match(v) {
                    self.issue(
                        at.key("enum"),
                        format!("value `{v}` does not match pattern `{src}`"),
                    );
                }
            }
        }
    }
}

/// regex syntax errors render as a multi-line caret diagram; diagnostics are one line each, and
/// the last line carries the actual reason.
fn one_line(e: &regex::Error) -> String {
    let text = e.to_string();
    let last = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    last.trim().trim_start_matches("error: ").to_owned()
}

/// Param patterns compiled once per source text. The US Core methods six connectors include
/// declare 44 patterns, 37 of them the same id pattern, and a compiled regex holds its own
/// automata; a clone shares them (`Regex` is an `Arc` inside).
#[derive(Default)]
pub(crate) struct Patterns(std::collections::HashMap<String, Regex>);

impl Patterns {
    /// The compiled `src`, compiled now on its first use. An error is not kept: each use of a
    /// bad pattern reports it.
    pub(crate) fn get(&mut self, src: &str) -> Result<Regex, regex::Error> {
        if let Some(re) = self.0.get(src) {
            return Ok(re.clone());
        }
        let re = compile_pattern(src)?;
        self.0.insert(src.to_owned(), re.clone());
        Ok(re)
    }
}

/// Compile a param pattern so that it must match the whole value (a bare `[0-9]+` would
/// otherwise accept `1; DROP`).
fn compile_pattern(src: &str) -> Result<Regex, regex::Error> {
    regex::RegexBuilder::new(&format!("^(?:{src})$"))
        .size_limit(1 << 20)
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_path_display_and_parse() {
        let p = FieldPath::root()
            .key("methods")
            .index(1)
            .key("params")
            .index(0)
            .key("name");
        assert_eq!(p.to_string(), "methods[1].params[0].name");
        assert_eq!(FieldPath::parse("methods[1].params[0].name"), p);
        let h = FieldPath::root().key("headers").key("Epic Client");
        assert_eq!(h.to_string(), "headers.\"Epic Client\"");
        assert_eq!(p.element().to_string(), "methods[1].params[0]");
        assert!(p.starts_with(&FieldPath::parse("methods[1]")));
        assert!(!p.starts_with(&FieldPath::parse("methods[2]")));
        let rq = FieldPath::parse("methods[0].require_one_of[2][1]");
        assert_eq!(rq.to_string(), "methods[0].require_one_of[2][1]");
    }

    #[test]
    fn patterns_match_whole_values() {
        let re = compile_pattern("[0-9]+").unwrap();
        assert!(re.is_match("123"));
        assert!(!re.is_match("1; DROP"));
        let re = compile_pattern("a|b").unwrap();
        assert!(re.is_match("a"));
        assert!(!re.is_match("ab"));
        assert!(compile_pattern("(").is_err());
    }
}
