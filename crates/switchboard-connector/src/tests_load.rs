//! Loader tests over the shipped connector files and deliberately broken copies.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde_json::json;

use crate::catalog::Connector;
use crate::load::{load_dir, load_file, load_str, Diagnostic};
use crate::model::AuthKind;
use crate::settings::{merge_settings, missing_for_auth};
use crate::template::render_str;

fn repo_connectors() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../connectors")
}

fn broken_fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/broken")
}

fn diags(src: &str) -> Vec<Diagnostic> {
    match load_str(Path::new("t.toml"), src) {
        Ok(_) => Vec::new(),
        Err(d) => d,
    }
}

fn show(d: &[Diagnostic]) -> String {
    d.iter().map(|d| format!("{d}\n")).collect()
}

/// 1-based line of the first line containing `marker`.
fn line_of(src: &str, marker: &str) -> usize {
    src.lines()
        .position(|l| l.contains(marker))
        .map(|i| i + 1)
        .unwrap_or_else(|| panic!("marker {marker:?} not in source"))
}

const BASE: &str = r#"id = "test"
name = "Test"
version = "1.0.0"
fhir_base = "{{settings.base}}fhir/"

[[settings]]
key = "base"
label = "Base"
type = "url"
default = "https://x.example/"

[[settings]]
key = "client_id"
label = "Client ID"

[[settings]]
key = "client_secret"
label = "Client Secret"
secret = true

[[auth]]
type = "oauth2_authorization_code"
authorize_url = "{{settings.base}}authorize"
token_url = "{{settings.base}}token"
client_id = "{{settings.client_id}}"
client_secret = "{{settings.client_secret}}"

[[methods]]
id = "get_patient"
name = "Get Patient"
verb = "GET"
path = "Patient/{id}"

[[methods.params]]
name = "id"
in = "path"
required = true
"#;

fn mutate(old: &str, new: &str) -> String {
    assert!(BASE.contains(old), "BASE lacks {old:?}");
    BASE.replacen(old, new, 1)
}

#[test]
fn base_fixture_is_valid() {
    let d = diags(BASE);
    assert!(d.is_empty(), "{}", show(&d));
}

#[test]
fn public_authorization_code_client_is_valid() {
    let src = mutate(
        "client_secret = \"{{settings.client_secret}}\"\n\n[[methods]]",
        "client_auth = \"none\"\n\n[[methods]]",
    );
    let d = diags(&src);
    assert!(d.is_empty(), "{}", show(&d));
}

#[test]
fn shipped_connectors_load_clean() {
    let catalog = match load_dir(&repo_connectors()) {
        Ok(c) => c,
        Err(d) => panic!("shipped connectors have problems:\n{}", show(&d)),
    };
    // Issue 11 added athenahealth, oracle_health and the generic smart connector.
    assert_eq!(
        catalog.ids().collect::<Vec<_>>(),
        [
            "athenahealth",
            "canvas",
            "epic",
            "epic_backend",
            "medplum",
            "oracle_health",
            "smart"
        ]
    );
    for c in catalog.iter() {
        assert!(c.method("get_patient").is_some(), "{}", c.id());
        assert!(c.method("search_patients").is_some(), "{}", c.id());
    }
}

#[test]
fn shipped_connectors_reference_the_schema() {
    for name in [
        "epic.toml",
        "canvas.toml",
        "medplum.toml",
        "oracle_health.toml",
        "athenahealth.toml",
        "smart.toml",
    ] {
        let src = fs::read_to_string(repo_connectors().join(name)).unwrap();
        assert_eq!(
            src.lines().next(),
            Some("#:schema ./connector.schema.json"),
            "{name}"
        );
    }
}

/// The diagnostics documented at the top of the broken fixture are exactly what the loader
/// reports (the integration test of `switchboard connectors validate` relies on this file).
#[test]
fn broken_fixture_reports_documented_diagnostics() {
    let dir = broken_fixture_dir();
    let src = fs::read_to_string(dir.join("broken.toml")).unwrap();
    let documented: Vec<String> = src
        .lines()
        .filter_map(|l| l.strip_prefix("#   broken.toml:"))
        .map(|l| format!("broken.toml:{l}"))
        .collect();
    assert!(documented.len() >= 5);
    let got: Vec<String> = load_dir(&dir)
        .unwrap_err()
        .iter()
        .map(|d| {
            let name = d.file.file_name().unwrap().to_string_lossy();
            format!("{name}:{}: {}", d.line, d.message)
        })
        .collect();
    assert_eq!(got, documented);
}

/// A broken copy of a shipped file: each problem is reported on its own line.
#[test]
fn broken_epic_copy_reports_each_problem_on_its_line() {
    let src = fs::read_to_string(repo_connectors().join("epic.toml")).unwrap();
    let broken = src
        // Unknown key.
        .replacen(
            "version = \"1.0.0\"",
            "version = \"1.0.0\"\nflavour = \"vanilla\"",
            1,
        )
        // Invalid URL.
        .replacen(
            "token_url = \"{{settings.endpoint}}oauth2/token\"",
            "token_url = \"oauth2/token\"",
            1,
        )
        // Bad template.
        .replacen(
            "scopes = \"{{settings.scopes}}\"",
            "scopes = \"{{settings.scope}}\"",
            1,
        )
        // Undeclared path param.
        .replacen("path = \"Patient/{id}\"", "path = \"Patient/{pid}\"", 1)
        // Duplicate method id.
        .replacen("id = \"search_patients\"", "id = \"get_patient\"", 1);
    // Named at its real place, so that its `[[include]]` of `_fhir/us_core.toml` resolves.
    let d = load_str(&repo_connectors().join("epic.toml"), &broken).unwrap_err();
    let expect = [
        (line_of(&broken, "flavour ="), "unknown key `flavour`"),
        (
            line_of(&broken, "token_url = \"oauth2/token\""),
            "auth[0].token_url: invalid URL",
        ),
        (
            line_of(&broken, "{{settings.scope}}"),
            "auth[0].scopes: `{{settings.scope}}` names no declared setting",
        ),
        (
            line_of(&broken, "Patient/{pid}"),
            "methods[0].path: placeholder `{pid}` is not declared",
        ),
        (
            line_of(&broken, "name = \"id\""),
            "methods[0].params[0].name: path param `id` does not appear",
        ),
        (
            line_of(&broken, "name = \"Search Patients\"") - 1,
            "methods[1].id: duplicate method id `get_patient`",
        ),
    ];
    for (line, text) in expect {
        assert!(
            d.iter().any(|x| x.line == line && x.message.contains(text)),
            "expected line {line}: {text}\ngot:\n{}",
            show(&d)
        );
    }
    assert_eq!(d.len(), expect.len(), "{}", show(&d));
    assert!(d.windows(2).all(|w| w[0].line <= w[1].line), "sorted");
}

/// (replace this, with this (the offending line marked `#HERE`), message fragment)
const CASES: &[(&str, &str, &str)] = &[
    // TOML syntax.
    (
        "name = \"Test\"",
        "name = \"Test #HERE",
        "TOML syntax",
    ),
    (
        "version = \"1.0.0\"",
        "version = \"1.0.0\"\nname = \"again\" #HERE",
        "TOML syntax: duplicate key",
    ),
    // Structure.
    (
        "label = \"Client ID\"",
        "label = \"Client ID\"\nrequired = \"yes\" #HERE",
        "settings[1].required: expected a boolean, found a string",
    ),
    (
        "verb = \"GET\"",
        "verb = \"get\" #HERE",
        "methods[0].verb: \"get\" is not one of \"GET\"",
    ),
    (
        "in = \"path\"",
        "in = \"paht\" #HERE",
        "did you mean \"path\"?",
    ),
    (
        "type = \"oauth2_authorization_code\"",
        "type = \"oauth2_code\" #HERE",
        "auth[0].type: \"oauth2_code\" is not one of",
    ),
    (
        "client_secret = \"{{settings.client_secret}}\"",
        "client_secret = \"{{settings.client_secret}}\"\nclient_secert = \"x\" #HERE",
        "auth[0]: unknown key `client_secert`; did you mean `client_secret`?",
    ),
    (
        "path = \"Patient/{id}\"\n",
        "pth = \"Patient/{id}\" #HERE\n",
        "methods[0]: unknown key `pth`; did you mean `path`?",
    ),
    (
        "[[methods]]\nid = \"get_patient\"\nname = \"Get Patient\"\nverb = \"GET\"\npath = \"Patient/{id}\"\n",
        "[[methods]] #HERE\nid = \"get_patient\"\nname = \"Get Patient\"\nverb = \"GET\"\n",
        "methods[0]: missing required key `path`",
    ),
    (
        "fhir_base = \"{{settings.base}}fhir/\"",
        "fhir_base = 42 #HERE",
        "fhir_base: expected a string, found an integer",
    ),
    (
        "required = true",
        "required = true\nminimum = 1e3 #HERE",
        "methods[0].params[0].minimum: expected an integer, found a float",
    ),
    // Ids.
    (
        "id = \"test\"",
        "id = \"Test-1\" #HERE",
        "invalid connector id `Test-1`",
    ),
    (
        "id = \"get_patient\"",
        "id = \"get-patient\" #HERE",
        "methods[0].id: invalid method id",
    ),
    (
        "[[auth]]",
        "[[settings]]\nkey = \"Client ID\" #HERE\nlabel = \"x\"\n\n[[auth]]",
        "settings[3].key: invalid setting key",
    ),
    (
        "version = \"1.0.0\"",
        "version = \"v1\" #HERE",
        "version: `v1` is not a semantic version",
    ),
    // Settings.
    (
        "[[auth]]",
        "[[settings]]\nkey = \"base\" #HERE\nlabel = \"x\"\n\n[[auth]]",
        "settings[3].key: duplicate setting key `base` (first declared at settings[0])",
    ),
    (
        "label = \"Client ID\"",
        "label = \"Client ID\"\ntype = \"enum\" #HERE",
        "settings[1].type: `enum` setting declares no `options`",
    ),
    (
        "label = \"Client ID\"",
        "label = \"Client ID\"\ntype = \"integer\"\ndefault = \"abc\" #HERE",
        "settings[1].default: invalid default: must be an integer",
    ),
    (
        "default = \"https://x.example/\"",
        "default = \"x.example\" #HERE",
        "settings[0].default: invalid default: must be an absolute http(s) URL",
    ),
    (
        "secret = true",
        "secret = true\ndefault = \"s3cr3t\" #HERE",
        "settings[2].default: a secret setting must not have a default",
    ),
    // Templates.
    (
        "client_id = \"{{settings.client_id}}\"",
        "client_id = \"{{settings.client_id\" #HERE",
        "auth[0].client_id: invalid template: unclosed `{{`",
    ),
    (
        "client_id = \"{{settings.client_id}}\"",
        "client_id = \"{{client_id}}\" #HERE",
        "auth[0].client_id: invalid template: unknown variable `client_id`",
    ),
    (
        "client_id = \"{{settings.client_id}}\"",
        "client_id = \"{{settings.clientid}}\" #HERE",
        "`{{settings.clientid}}` names no declared setting",
    ),
    (
        "client_id = \"{{settings.client_id}}\"",
        "client_id = \"{{redirect_uri}}\" #HERE",
        "`{{redirect_uri}}` is only available in token_params",
    ),
    (
        "fhir_base = \"{{settings.base}}fhir/\"",
        "fhir_base = \"{{fhir_base}}fhir/\" #HERE",
        "fhir_base: `{{fhir_base}}` cannot be used here",
    ),
    (
        "token_url = \"{{settings.base}}token\"",
        "token_url = \"{{settings.base}}token?key={{settings.client_secret}}\" #HERE",
        "secret setting `client_secret` cannot be used here",
    ),
    (
        "client_secret = \"{{settings.client_secret}}\"",
        "client_secret = \"{{settings.client_id}}\" #HERE",
        "setting `client_id` is not secret",
    ),
    (
        "client_secret = \"{{settings.client_secret}}\"",
        "client_secret = \"hunter2\" #HERE",
        "must consist of secret settings only",
    ),
    // URLs.
    (
        "token_url = \"{{settings.base}}token\"",
        "token_url = \"/token\" #HERE",
        "auth[0].token_url: invalid URL: with sample settings this renders to `/token`",
    ),
    (
        "authorize_url = \"{{settings.base}}authorize\"",
        "authorize_url = \"{{settings.base}}authorize#x\" #HERE",
        "should not contain a fragment",
    ),
    (
        "fhir_base = \"{{settings.base}}fhir/\"",
        "fhir_base = \"{{settings.client_id}}/fhir/\" #HERE",
        "fhir_base: invalid URL",
    ),
    // Auth coherence.
    (
        "[[auth]]\ntype = \"oauth2_authorization_code\"\nauthorize_url = \"{{settings.base}}authorize\"\ntoken_url = \"{{settings.base}}token\"\nclient_id = \"{{settings.client_id}}\"\nclient_secret = \"{{settings.client_secret}}\"\n",
        "",
        "auth: declare at least one auth type",
    ),
    (
        "client_secret = \"{{settings.client_secret}}\"\n\n",
        "client_secret = \"{{settings.client_secret}}\"\n\n[[auth]]\ntype = \"oauth2_authorization_code\" #HERE\nauthorize_url = \"{{settings.base}}a\"\ntoken_url = \"{{settings.base}}t\"\nclient_id = \"{{settings.client_id}}\"\nclient_secret = \"{{settings.client_secret}}\"\n\n",
        "auth[1].type: duplicate auth type `oauth2_authorization_code`",
    ),
    (
        "client_secret = \"{{settings.client_secret}}\"\n",
        "client_auth = \"client_secret_post\" #HERE\n",
        "auth[0].client_auth: client_auth = \"client_secret_post\" needs a client_secret",
    ),
    (
        "client_secret = \"{{settings.client_secret}}\"\n",
        "client_secret = \"{{settings.client_secret}}\" #HERE\nclient_auth = \"none\"\n",
        "auth[0].client_secret: client_auth = \"none\" (public client) must not declare a client_secret",
    ),
    (
        "client_secret = \"{{settings.client_secret}}\"\n",
        "client_secret = \"{{settings.client_secret}}\"\nauthorize_params = { state = \"x\" } #HERE\n",
        "auth[0].authorize_params.state: authorize parameter `state` is set by the host",
    ),
    // Methods and params.
    (
        "path = \"Patient/{id}\"",
        "path = \"/Patient/{id}\" #HERE",
        "methods[0].path: must be relative",
    ),
    (
        "required = true\n",
        "required = false #HERE\n",
        "methods[0].params[0].required: path params must be declared required = true",
    ),
    (
        "required = true\n",
        "required = true\npattern = \"[0-9\" #HERE\n",
        "methods[0].params[0].pattern: invalid regex",
    ),
    (
        "required = true\n",
        "required = true\n\n[[methods.params]]\nname = \"id\" #HERE\nin = \"query\"\n",
        "methods[0].params[1].name: duplicate param name `id`",
    ),
    (
        "required = true\n",
        "required = true\n\n[[methods.params]]\nname = \"q\"\nin = \"query\"\ntype = \"integer\"\nminimum = 10 #HERE\nmaximum = 1\n",
        "minimum 10 is greater than maximum 1",
    ),
    (
        "required = true\n",
        "required = true\n\n[[methods.params]]\nname = \"q\"\nin = \"query\"\ntype = \"json\" #HERE\n",
        "type = \"json\" is only for in = \"body\"",
    ),
    (
        "required = true\n",
        "required = true\n\n[[methods.params]]\nname = \"q\"\nin = \"body\" #HERE\n",
        "GET requests carry no body",
    ),
    (
        "path = \"Patient/{id}\"",
        "path = \"Patient/{id}\"\nrequire_one_of = [[\"id\"], [\"nope\"]] #HERE",
        "methods[0].require_one_of[1][0]: require_one_of names unknown param `nope`",
    ),
    (
        "[[methods]]\nid = \"get_patient\"\nname = \"Get Patient\"\nverb = \"GET\"\npath = \"Patient/{id}\"\n\n[[methods.params]]\nname = \"id\"\nin = \"path\"\nrequired = true\n",
        "",
        "methods: declare at least one method",
    ),
    (
        "version = \"1.0.0\"",
        "version = \"1.0.0\"\nheaders = { Authorization = \"x\" } #HERE",
        "headers.Authorization: header `Authorization` is set by the host",
    ),
];

#[test]
fn each_problem_is_reported_once_on_its_line() {
    let mut failures = String::new();
    for (old, new, fragment) in CASES {
        let mut src = mutate(old, new);
        if new.is_empty() {
            // Removing a whole array of tables: declare it empty at the top level instead.
            let key = if old.starts_with("[[auth]]") {
                "auth"
            } else {
                "methods"
            };
            src = src.replacen(
                "version = \"1.0.0\"",
                &format!("version = \"1.0.0\"\n{key} = [] #HERE"),
                1,
            );
        }
        let line = line_of(&src, "#HERE");
        let d = diags(&src);
        if !(d.len() == 1 && d[0].line == line && d[0].message.contains(fragment)) {
            failures.push_str(&format!(
                "case {new:?}: expected exactly one diagnostic on line {line} containing {fragment:?}, got:\n{}\n",
                show(&d)
            ));
        }
    }
    assert!(failures.is_empty(), "{failures}");
}

#[test]
fn structural_and_semantic_problems_are_reported_together() {
    let src = BASE
        .replacen("label = \"Base\"", "label = \"Base\"\ncolour = 1", 1)
        .replacen("in = \"path\"", "in = \"path\"\nsize = 2", 1)
        .replacen("path = \"Patient/{id}\"", "path = \"Patient/{pid}\"", 1)
        .replacen(
            "client_id = \"{{settings.client_id}}\"",
            "client_id = \"{{settings.nope}}\"",
            1,
        );
    let d = diags(&src);
    let lines: Vec<usize> = d.iter().map(|d| d.line).collect();
    assert_eq!(
        lines,
        [
            line_of(&src, "colour"),
            line_of(&src, "{{settings.nope}}"),
            line_of(&src, "Patient/{pid}"),
            line_of(&src, "name = \"id\""),
            line_of(&src, "size = 2"),
        ],
        "{}",
        show(&d)
    );
}

#[test]
fn repaired_values_do_not_cause_follow_up_noise() {
    // An invalid `in` is replaced by a stand-in; it must not also produce "path param does not
    // appear in path" and the like.
    let src = mutate("in = \"path\"", "in = 7");
    let d = diags(&src);
    assert_eq!(d.len(), 1, "{}", show(&d));
    assert!(d[0].message.contains("expected one of"), "{}", show(&d));

    // A broken auth entry is dropped: no "declare at least one auth type" on top.
    let src = mutate(
        "type = \"oauth2_authorization_code\"",
        "type = \"oauth2_authorization_code\"\nauthorize_url = 5",
    );
    let d = diags(&src);
    assert!(
        d.iter().all(|x| !x.message.contains("at least one")),
        "{}",
        show(&d)
    );
}

#[test]
fn load_dir_only_reads_toml_files_and_reports_duplicate_ids() {
    let tmp = tempdir();
    fs::write(tmp.join("a.toml"), BASE).unwrap();
    fs::write(tmp.join("connector.schema.json"), "{}").unwrap();
    fs::write(tmp.join("notes.md"), "# not a connector").unwrap();
    fs::write(tmp.join(".a.toml.swp"), "garbage").unwrap();
    fs::write(tmp.join(".hidden.toml"), "garbage = ").unwrap();
    fs::create_dir_all(tmp.join("nested")).unwrap();
    fs::write(tmp.join("nested/broken.toml"), "garbage = ").unwrap();
    let catalog = load_dir(&tmp).unwrap_or_else(|d| panic!("{}", show(&d)));
    assert_eq!(catalog.ids().collect::<Vec<_>>(), ["test"]);
    assert!(catalog.get("test").is_some());
    assert!(catalog.get("nope").is_none());

    fs::write(tmp.join("b.toml"), format!("# another\n{BASE}")).unwrap();
    let d = load_dir(&tmp).unwrap_err();
    assert_eq!(d.len(), 1, "{}", show(&d));
    assert_eq!(d[0].file, tmp.join("b.toml"));
    assert_eq!(d[0].line, 2);
    assert!(d[0].message.contains("duplicate connector id `test`"));
    let _ = fs::remove_dir_all(&tmp);
}

#[test]
fn load_errors_for_missing_paths() {
    let missing = PathBuf::from("/nonexistent/switchboard/connectors");
    let d = load_dir(&missing).unwrap_err();
    assert_eq!(d.len(), 1);
    assert!(d[0]
        .to_string()
        .starts_with("/nonexistent/switchboard/connectors:1: "));
    let d = load_file(&missing.join("x.toml")).unwrap_err();
    assert!(d[0].message.starts_with("cannot read file"));
}

fn tempdir() -> PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "switchboard-connector-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn shipped(id: &str) -> std::sync::Arc<Connector> {
    load_dir(&repo_connectors())
        .unwrap_or_else(|d| panic!("{}", show(&d)))
        .get(id)
        .unwrap()
}

/// Every URL of every shipped connector comes from settings given as full URLs, so a test can
/// point an install at a local upstream.
#[test]
fn shipped_urls_can_point_at_a_local_upstream() {
    let local = "http://127.0.0.1:4321/";
    let cases = [
        ("epic", map(&[("endpoint", local)])),
        (
            "canvas",
            map(&[("instance_url", local), ("fhir_base_url", local)]),
        ),
        ("medplum", map(&[("base_url", local)])),
    ];
    for (id, overrides) in cases {
        let c = shipped(id);
        let setup = map(&[
            ("client_id", "cid"),
            ("client_secret", "sec"),
            ("api_token", "tok"),
        ]);
        let merged = merge_settings(&c.def, &setup, &overrides);
        let ctx = c
            .context(merged)
            .unwrap()
            .with_redirect_uri("http://127.0.0.1:8080/connector/callback");
        assert!(ctx.fhir_base.as_deref().unwrap().starts_with(local), "{id}");
        for auth in &c.auth {
            for (field, template) in auth.templates() {
                let rendered = render_str(template, &ctx).unwrap();
                if field.ends_with("_url") {
                    assert!(rendered.starts_with(local), "{id} {field}: {rendered}");
                }
                // Issue 11: Canvas's issuer is the instance URL WITHOUT its trailing slash.
                if field == "issuer" {
                    let origin = local.trim_end_matches('/');
                    assert!(rendered.starts_with(origin), "{id} {field}: {rendered}");
                }
            }
        }
    }
}

#[test]
fn epic_renders_as_documented() {
    let c = shipped("epic");
    let setup = map(&[("client_id", "cid"), ("client_secret", "sec")]);
    let overrides = map(&[("endpoint", "https://x.org/FHIRProxy/")]);
    let merged = merge_settings(&c.def, &setup, &overrides);
    let ctx = c.context(merged).unwrap();
    assert_eq!(
        ctx.fhir_base.as_deref(),
        Some("https://x.org/FHIRProxy/api/FHIR/R4/")
    );
    let crate::model::AuthDef::Oauth2AuthorizationCode(a) = &c.auth[0] else {
        panic!("epic's first auth type is the authorization code");
    };
    assert_eq!(
        render_str(a.authorize_url.as_deref().unwrap(), &ctx).unwrap(),
        "https://x.org/FHIRProxy/oauth2/authorize"
    );
    assert_eq!(
        render_str(a.token_url.as_deref().unwrap(), &ctx).unwrap(),
        "https://x.org/FHIRProxy/oauth2/token"
    );
    assert_eq!(
        render_str(&a.authorize_params["aud"], &ctx).unwrap(),
        "https://x.org/FHIRProxy/api/FHIR/R4/"
    );
    assert_eq!(
        render_str(a.issuer.as_deref().unwrap(), &ctx).unwrap(),
        "https://x.org/FHIRProxy/oauth2"
    );
    assert!(render_str(&a.scopes, &ctx)
        .unwrap()
        .contains("user/Patient.read"));

    // The endpoint pasted from the directory normalises to the same root.
    let endpoint = c.setting("endpoint").unwrap();
    assert_eq!(
        endpoint
            .validate_value(&json!("https://x.org/FHIRProxy/api/fhir/r4"))
            .unwrap(),
        "https://x.org/FHIRProxy/"
    );
}

#[test]
fn epic_search_requires_a_minimum_combination() {
    let c = shipped("epic");
    let m = c.method("search_patients").unwrap();
    let given = |names: &'static [&'static str]| move |n: &str| names.contains(&n);
    assert!(m.satisfies_required_combinations(given(&["_id"])));
    assert!(m.satisfies_required_combinations(given(&["identifier", "gender"])));
    assert!(m.satisfies_required_combinations(given(&["given", "family", "birthdate"])));
    assert!(m.satisfies_required_combinations(given(&["given", "family", "legal-sex", "telecom"])));
    assert!(!m.satisfies_required_combinations(given(&["given", "family"])));
    assert!(!m.satisfies_required_combinations(given(&[])));
    assert!(m
        .required_combinations_hint()
        .starts_with("[_id] or [identifier] or [given, family, birthdate]"));
    // Methods without combinations accept anything.
    assert!(c
        .method("get_patient")
        .unwrap()
        .satisfies_required_combinations(given(&[])));
}

#[test]
fn compiled_methods_render_paths_and_check_patterns() {
    let c = shipped("epic");
    let m = c.method("get_patient").unwrap();
    assert_eq!(
        m.render_path(|name| (name == "id").then_some("eq081-VQEgP8drUUqCWzHfw3"))
            .unwrap(),
        "Patient/eq081-VQEgP8drUUqCWzHfw3"
    );
    let id = m.param("id").unwrap();
    assert!(id.matches_pattern("erXuFYUfucBZaryVksYEcMg3"));
    assert!(!id.matches_pattern("a/b"));
    assert!(!id.matches_pattern(""));
    let s = c.method("search_patients").unwrap();
    assert!(s.param("birthdate").unwrap().matches_pattern("1987-09-12"));
    assert!(!s.param("birthdate").unwrap().matches_pattern("12/09/1987"));
    assert!(s.param("family").unwrap().matches_pattern("anything"));

    let canvas = shipped("canvas");
    let search = canvas.method("search_patients").unwrap();
    assert_eq!(
        search.param("birthdate").unwrap().def.wire_name(),
        "birthdate",
        "Canvas's Patient search_parameters list `birthdate` (see canvas.toml)"
    );
    let count = &search.param("_count").unwrap().def;
    assert_eq!((count.minimum, count.maximum), (Some(1), Some(100)));
    assert!(search
        .param("_sort")
        .unwrap()
        .matches_pattern("-birthdate,family"));
    assert!(!search.param("_sort").unwrap().matches_pattern("name"));
}

#[test]
fn settings_needed_depend_on_the_auth_type() {
    let c = shipped("canvas");
    let setup = map(&[("fhir_base_url", "https://fumage-x.canvasmedical.com/")]);
    let merged = merge_settings(&c.def, &setup, &BTreeMap::new());
    assert_eq!(
        missing_for_auth(&c.def, AuthKind::StaticBearer, &merged),
        ["api_token"]
    );
    assert_eq!(
        missing_for_auth(&c.def, AuthKind::Oauth2AuthorizationCode, &merged),
        ["instance_url", "client_id", "client_secret"]
    );
    // Client credentials may send no scope at all (Canvas: full access): "" is its default.
    assert_eq!(
        missing_for_auth(&c.def, AuthKind::Oauth2ClientCredentials, &merged),
        ["instance_url", "client_id", "client_secret"]
    );
    assert_eq!(c.auth[0].kind(), AuthKind::Oauth2AuthorizationCode);
}

#[test]
fn connector_new_validates_definitions_built_in_code() {
    let mut def = load_str(Path::new("t.toml"), BASE).unwrap();
    assert!(Connector::new(def.clone()).is_ok());
    def.methods[0].path = "Patient/{pid}".into();
    let err = Connector::new(def).unwrap_err();
    assert!(
        err.problems
            .iter()
            .any(|p| p.starts_with("methods[0].path: placeholder `{pid}`")),
        "{err}"
    );
}

#[test]
fn connector_derefs_to_its_definition_and_renders_headers() {
    let src = BASE.replacen(
        "version = \"1.0.0\"",
        "version = \"1.0.0\"\nheaders = { Accept = \"application/fhir+json\", X-Base = \"{{fhir_base}}\" }",
        1,
    );
    let c = Connector::new(load_str(Path::new("t.toml"), &src).unwrap()).unwrap();
    assert_eq!(c.id, "test");
    assert_eq!(c.name, "Test");
    let ctx = c.context(map(&[("base", "https://h.example/")])).unwrap();
    assert_eq!(
        c.render_headers(&ctx).unwrap(),
        [
            ("Accept".to_owned(), "application/fhir+json".to_owned()),
            ("X-Base".to_owned(), "https://h.example/fhir/".to_owned())
        ]
    );
    // A FHIR base template without a trailing slash still yields one.
    let src = BASE.replacen("{{settings.base}}fhir/", "{{settings.base}}fhir", 1);
    let c = Connector::new(load_str(Path::new("t.toml"), &src).unwrap()).unwrap();
    assert_eq!(
        c.render_fhir_base(&map(&[("base", "https://h.example/")]))
            .unwrap(),
        "https://h.example/fhir/"
    );
    let err = c.render_fhir_base(&BTreeMap::new()).unwrap_err();
    assert_eq!(err.to_string(), "setting `base` has no value");
}

#[test]
fn every_syntax_error_is_reported() {
    let src = "id = \"x\"\nname = \nversion = \"1.0.0\nfhir_base = \"https://x/\"\n";
    let d = diags(src);
    assert!(d.len() >= 2, "{}", show(&d));
    assert_eq!(d[0].line, 2, "{}", show(&d));
    assert!(d.iter().any(|x| x.line == 3), "{}", show(&d));
    assert!(d.iter().all(|x| x.message.starts_with("TOML syntax: ")));
}

#[test]
fn diagnostics_name_files_as_the_directory_was_given() {
    // Unit tests run in the crate directory.
    let d = load_dir(Path::new("tests/fixtures/broken")).unwrap_err();
    assert!(
        d[0].to_string()
            .starts_with("tests/fixtures/broken/broken.toml:25: fhir_base: invalid URL"),
        "{}",
        show(&d)
    );
    assert!(d.iter().all(|x| !x.message.contains('\n')));
}

#[test]
fn limits_section_is_read_and_validated_with_lines() {
    let src =
        format!("{BASE}\n[limits]\ntoken_requests_per_minute = 50\nrequests_per_second = 10\n");
    let def = load_str(Path::new("t.toml"), &src).unwrap();
    let limits = def.limits.expect("limits read");
    assert_eq!(limits.token_requests_per_minute, Some(50));
    assert_eq!(limits.requests_per_second, Some(10));

    let src = format!("{BASE}\n[limits]\ntoken_requests_per_minute = 0\n");
    let d = diags(&src);
    assert_eq!(d.len(), 1, "{}", show(&d));
    assert_eq!(d[0].line, line_of(&src, "token_requests_per_minute"));
    assert!(
        d[0].to_string().contains("must be between 1"),
        "{}",
        show(&d)
    );

    let src = format!("{BASE}\n[limits]\nrequests_per_minute = 5\n");
    let d = diags(&src);
    assert_eq!(d.len(), 1, "{}", show(&d));
    assert_eq!(d[0].line, line_of(&src, "requests_per_minute"));
}

#[test]
fn bulk_export_methods_are_checked_against_their_level() {
    let method = |extra: &str| {
        format!(
            "{BASE}\n[[methods]]\nid = \"export_x\"\nname = \"Export\"\nverb = \"GET\"\n{extra}\n"
        )
    };
    // Valid: each level on its own endpoint.
    for (path, level) in [
        ("Patient/$export", "patient"),
        ("Group/{id}/$export", "group"),
        ("$export", "system"),
    ] {
        let params = if level == "group" {
            "\n[[methods.params]]\nname = \"id\"\nin = \"path\"\nrequired = true\n"
        } else {
            ""
        };
        let src = method(&format!(
            "path = \"{path}\"\nkind = \"bulk_export\"\nlevel = \"{level}\"{params}"
        ));
        assert!(diags(&src).is_empty(), "{level}: {}", show(&diags(&src)));
    }
    let cases = [
        (
            "path = \"Patient/$export\"\nkind = \"bulk_export\"",
            "needs `level`",
        ),
        (
            "path = \"Patient/$export\"\nkind = \"bulk_export\"\nlevel = \"system\"",
            "as its level says",
        ),
        ("path = \"Patient\"\nlevel = \"patient\"", "only for kind"),
    ];
    for (extra, want) in cases {
        let d = diags(&method(extra));
        assert!(show(&d).contains(want), "{extra}: {}", show(&d));
    }
}
