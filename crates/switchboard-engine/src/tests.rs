use std::collections::BTreeMap;
use std::path::Path;
use std::sync::LazyLock;
use std::time::Duration;

use reqwest::header::{self as h, HeaderMap, HeaderName, HeaderValue};
use serde_json::{json, Map, Value};
use switchboard_connector::{
    is_reserved_header, load_str, Catalog, CompiledMethod, Connector, TemplateContext,
};
use switchboard_outbound::{Outbound, OutboundConfig};
use url::Url;
use wiremock::matchers::{header, method, path, query_param, query_param_is_missing};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::error::{parse_outcome, status_error};
use crate::*;

const SECRET: &str = "SECRET-VALUE";

/// Everything but the methods: a connector the loader accepts.
const HEAD: &str = r#"
id = "enginetest"
name = "Engine test"
version = "1.0.0"
fhir_base = "{{settings.base}}"

[headers]
Epic-Client-ID = "{{settings.client_id}}"

[[settings]]
key = "base"
label = "FHIR base"
type = "url"
default = "https://ehr.example.com/fhir/R4/"

[[settings]]
key = "client_id"
label = "Client ID"

[[settings]]
key = "api_token"
label = "API token"
secret = true

[[auth]]
type = "static_bearer"
token = "{{settings.api_token}}"
"#;

/// The methods the tests run, declared as a connector file declares them.
const METHODS: &str = r#"
[[methods]]
id = "get_patient"
name = "Get patient"
verb = "GET"
path = "Patient/{id}"
params = [{ name = "id", in = "path", type = "string", required = true }]

[[methods]]
id = "search_patients"
name = "Search patients"
verb = "GET"
path = "Patient"
paging = "fhir_bundle"
require_one_of = [["_id"], ["identifier"], ["given", "family", "birthdate"]]
params = [
    { name = "_id", in = "query", type = "string" },
    { name = "identifier", in = "query", type = "token", repeated = true },
    { name = "given", in = "query", type = "string" },
    { name = "family", in = "query", type = "string" },
    { name = "birthdate", upstream_name = "birthDate", in = "query", type = "date" },
    { name = "gender", in = "query", enum = ["male", "female", "other", "unknown"] },
    { name = "_count", in = "query", type = "integer", minimum = 1, maximum = 100 },
    { name = "active", in = "query", type = "boolean" },
    { name = "weight", in = "query", type = "number" },
    { name = "mrn", in = "query", pattern = "[0-9]{3,10}" },
    { name = "x-trace", in = "header" },
]

[[methods]]
id = "create"
name = "Match patients"
verb = "POST"
path = "Patient/$match"
params = [
    { name = "resource", in = "body", type = "json", required = true },
    { name = "count", upstream_name = "_count", in = "body", type = "integer" },
]

[[methods]]
id = "match_patients"
name = "Match patients (resource only)"
verb = "POST"
path = "Patient/$match"
params = [{ name = "resource", in = "body", type = "json" }]

[[methods]]
id = "create_obs"
name = "Create observation"
verb = "POST"
path = "Observation"
conditional_identifier = true
body = { resource_type = "Observation", required = ["status", "code"] }

[[methods]]
id = "get_document"
name = "Get document"
verb = "GET"
path = "DocumentReference/{docid}/$binary"
params = [{ name = "docid", in = "path", required = true, pattern = "[a-z0-9/]+" }]
"#;

/// The test connector, loaded and compiled the way the service loads `connectors/`.
static CATALOG: LazyLock<Catalog> = LazyLock::new(|| {
    let src = format!("{HEAD}{METHODS}");
    let def = load_str(Path::new("enginetest.toml"), &src)
        .unwrap_or_else(|d| panic!("{}", load_problems(&d)));
    [Connector::new(def).unwrap()].into_iter().collect()
});

fn connector() -> &'static Connector {
    CATALOG.iter().next().unwrap()
}

fn compiled(id: &str) -> &'static CompiledMethod {
    connector().method(id).unwrap()
}

fn load_problems(d: &[switchboard_connector::Diagnostic]) -> String {
    d.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// What the loader says about a connector with these methods (empty when it loads).
fn load_errors(methods: &str) -> String {
    match load_str(Path::new("t.toml"), &format!("{HEAD}{methods}")) {
        Ok(def) => match Connector::new(def) {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        },
        Err(d) => load_problems(&d),
    }
}

fn params(v: Value) -> Map<String, Value> {
    v.as_object().unwrap().clone()
}

fn get_patient() -> &'static CompiledMethod {
    compiled("get_patient")
}

fn search_patients() -> &'static CompiledMethod {
    compiled("search_patients")
}

fn errors_of(m: &CompiledMethod, p: Value) -> Vec<ParamError> {
    validate_params(m, &params(p)).unwrap_err()
}

fn one_error(m: &CompiledMethod, p: Value) -> ParamError {
    let errs = errors_of(m, p);
    assert_eq!(errs.len(), 1, "{errs:?}");
    errs.into_iter().next().unwrap()
}

fn base() -> Url {
    Url::parse("https://ehr.example.com/fhir/R4/").unwrap()
}

fn build(m: &CompiledMethod, p: Value) -> reqwest::Request {
    let valid = validate_params(m, &params(p)).unwrap();
    build_request(&base(), &valid, &[], "tok").unwrap()
}

// ---------------------------------------------------------------- parameter validation

#[test]
fn unknown_parameter() {
    let e = one_error(get_patient(), json!({"id": "1", "nmae": "x"}));
    assert_eq!(e.field, "nmae");
    assert!(e.message.contains("unknown"));
}

#[test]
fn missing_required_and_path_params() {
    let e = one_error(get_patient(), json!({}));
    assert_eq!(
        (e.field.as_str(), e.message.as_str()),
        ("id", "is required")
    );
    // null counts as absent
    let e = one_error(get_patient(), json!({"id": null}));
    assert_eq!(e.field, "id");
    // a path param is required even if the definition forgot to say so: the catalogue does
    // not load such a definition, and the compiled param counts as required regardless
    let forgot = load_errors(
        r#"
[[methods]]
id = "m"
name = "m"
verb = "GET"
path = "Patient/{id}"
params = [{ name = "id", in = "path" }]
"#,
    );
    assert!(
        forgot.contains("path params must be declared required = true"),
        "{forgot}"
    );
    assert!(get_patient().param("id").unwrap().is_required());
}

#[test]
fn wrong_types() {
    let m = search_patients();
    let cases = [
        (json!({"_id": 5}), "_id", "must be a string"),
        (
            json!({"_id": "1", "_count": "5"}),
            "_count",
            "must be an integer",
        ),
        (
            json!({"_id": "1", "_count": 1.5}),
            "_count",
            "must be an integer",
        ),
        (
            json!({"_id": "1", "active": "true"}),
            "active",
            "must be a boolean",
        ),
        (
            json!({"_id": "1", "weight": "7"}),
            "weight",
            "must be a number",
        ),
        (
            json!({"_id": "1", "birthdate": SECRET}),
            "birthdate",
            "must be a date",
        ),
        (
            json!({"identifier": [SECRET.to_owned() + "|a|b"]}),
            "identifier[0]",
            "must be a token",
        ),
    ];
    for (p, field, msg) in cases {
        let e = one_error(m, p);
        assert_eq!(e.field, field);
        assert!(e.message.starts_with(msg), "{field}: {}", e.message);
        assert!(!e.message.contains(SECRET));
    }
    let ok = validate_params(
        m,
        &params(json!({"_id": "1", "_count": 10, "active": false, "weight": 7.5})),
    );
    assert!(ok.is_ok());
}

#[test]
fn fhir_dates() {
    let m = search_patients();
    for good in [
        "2024",
        "2024-02",
        "2024-02-29",
        "ge2024-01-01",
        "eb1990",
        "ap2000-12",
        "sa2000-01-31",
    ] {
        assert!(
            validate_params(m, &params(json!({"_id": "1", "birthdate": good}))).is_ok(),
            "{good}"
        );
    }
    for bad in [
        "24",
        "2023-02-29",
        "2024-13",
        "2024-04-31",
        "2024-1-01",
        "xx2024",
        "GE2024",
        "0000",
        "2024-01-01T00:00",
        "2024/01/01",
        "ge",
    ] {
        assert!(
            validate_params(m, &params(json!({"_id": "1", "birthdate": bad}))).is_err(),
            "{bad}"
        );
    }
}

#[test]
fn fhir_tokens() {
    let m = search_patients();
    for good in [
        "123",
        "MRN|202497",
        "http://hl7.org/fhir/sid/us-ssn|",
        "|abc",
    ] {
        // a repeated parameter takes a single value or an array
        assert!(
            validate_params(m, &params(json!({"identifier": good}))).is_ok(),
            "{good}"
        );
        assert!(
            validate_params(m, &params(json!({"identifier": [good]}))).is_ok(),
            "{good}"
        );
    }
    for bad in ["|", "a|b|c", ""] {
        assert!(
            validate_params(m, &params(json!({"identifier": [bad]}))).is_err(),
            "{bad}"
        );
        assert!(
            validate_params(m, &params(json!({"identifier": bad}))).is_err(),
            "{bad}"
        );
    }
}

#[test]
fn enum_pattern_and_bounds() {
    let m = search_patients();
    let e = one_error(m, json!({"_id": "1", "gender": SECRET}));
    assert_eq!(e.message, "must be one of: male, female, other, unknown");
    let e = one_error(m, json!({"_id": "1", "mrn": "12345a"}));
    assert_eq!(e.message, "must match the pattern [0-9]{3,10}");
    // full match: a matching substring is not enough
    assert!(validate_params(m, &params(json!({"_id": "1", "mrn": "a12345"}))).is_err());
    assert!(validate_params(m, &params(json!({"_id": "1", "mrn": "12345"}))).is_ok());
    assert_eq!(
        one_error(m, json!({"_id": "1", "_count": 0})).message,
        "must be at least 1"
    );
    assert_eq!(
        one_error(m, json!({"_id": "1", "_count": 101})).message,
        "must be at most 100"
    );
    assert!(validate_params(m, &params(json!({"_id": "1", "_count": 100}))).is_ok());
}

#[test]
fn arrays_only_when_repeated() {
    let m = search_patients();
    let e = one_error(m, json!({"_id": ["1", "2"]}));
    assert_eq!(e.message, "must be a single string, not an array");
    let e = one_error(m, json!({"identifier": []}));
    assert_eq!(e.message, "must not be an empty array");
    let e = one_error(m, json!({"identifier": ["MRN|1", 7]}));
    assert_eq!(e.field, "identifier[1]");
    let many: Vec<String> = (0..=MAX_REPEATED_VALUES).map(|i| i.to_string()).collect();
    assert!(validate_params(m, &params(json!({"identifier": many}))).is_err());
}

#[test]
fn empty_long_and_control_values() {
    let m = search_patients();
    assert_eq!(
        one_error(m, json!({"_id": ""})).message,
        "must not be empty"
    );
    let long = "a".repeat(MAX_VALUE_CHARS + 1);
    assert_eq!(
        one_error(m, json!({"_id": long})).message,
        "must be at most 1024 characters"
    );
    assert!(validate_params(m, &params(json!({"_id": "é".repeat(MAX_VALUE_CHARS)}))).is_ok());
    let e = one_error(m, json!({"_id": format!("{SECRET}\r\nX: y")}));
    assert_eq!(e.message, "must not contain control characters");
    let e = one_error(m, json!({"_id": "1", "x-trace": "café"}));
    assert_eq!(e.message, "must contain only printable ASCII characters");
}

#[test]
fn dot_segments_refused_in_path_params() {
    for v in [".", ".."] {
        let e = one_error(get_patient(), json!({"id": v}));
        assert_eq!(e.message, "must not be \".\" or \"..\"");
    }
}

#[test]
fn require_one_of_lists_combinations() {
    let m = search_patients();
    let e = one_error(m, json!({"given": "Ann", "family": "Lee"}));
    assert_eq!(e.field, "params");
    assert_eq!(
        e.message,
        "supply every parameter of at least one of these combinations: \
         [_id] or [identifier] or [given, family, birthdate]"
    );
    assert!(validate_params(
        m,
        &params(json!({"given": "Ann", "family": "Lee", "birthdate": "1990-01-02"}))
    )
    .is_ok());
    assert!(validate_params(m, &params(json!({"identifier": ["MRN|1"]}))).is_ok());
}

#[test]
fn all_errors_are_reported_and_none_echo_values() {
    let m = search_patients();
    let errs = errors_of(
        m,
        json!({"_id": [SECRET], "gender": SECRET, "_count": SECRET, "zz": SECRET}),
    );
    assert_eq!(errs.len(), 4, "{errs:?}");
    let text = serde_json::to_string(&errs).unwrap();
    assert!(!text.contains(SECRET), "{text}");
    // Debug of valid params shows names only
    let ok = validate_params(m, &params(json!({"_id": SECRET}))).unwrap();
    assert!(!format!("{ok:?}").contains(SECRET));
}

#[test]
fn invalid_connector_pattern_is_reported() {
    // Patterns are compiled once, by the catalogue: an invalid one never reaches the engine.
    let errors = load_errors(
        r#"
[[methods]]
id = "m"
name = "m"
verb = "GET"
path = "X"
params = [{ name = "a", in = "query", pattern = "(unclosed" }]
"#,
    );
    assert!(errors.contains("pattern"), "{errors}");
    assert!(errors.contains("invalid regex"), "{errors}");
    // The compiled pattern is the one calls are checked with.
    let mrn = search_patients().param("mrn").unwrap();
    assert!(mrn.matches_pattern("12345") && !mrn.matches_pattern("12345a"));
    assert!(validate_params(
        search_patients(),
        &params(json!({"_id": "1", "mrn": "12345"}))
    )
    .is_ok());
}

// ---------------------------------------------------------------- request building

#[test]
fn path_values_are_one_encoded_segment() {
    let m = get_patient();
    let cases = [
        ("../Observation", "/fhir/R4/Patient/..%2FObservation"),
        ("a/b?x", "/fhir/R4/Patient/a%2Fb%3Fx"),
        ("%2e%2e%2f", "/fhir/R4/Patient/%252e%252e%252f"),
        ("..%2f..%2fadmin", "/fhir/R4/Patient/..%252f..%252fadmin"),
        ("x#frag", "/fhir/R4/Patient/x%23frag"),
        ("a b+c", "/fhir/R4/Patient/a%20b%2Bc"),
        ("eRj.7-_~", "/fhir/R4/Patient/eRj.7-_~"),
    ];
    for (id, want) in cases {
        let req = build(m, json!({"id": id}));
        let url = req.url();
        assert_eq!(url.path(), want, "{id}");
        assert_eq!(url.query(), None, "{id}");
        assert_eq!(url.fragment(), None, "{id}");
        assert_eq!(url.host_str(), Some("ehr.example.com"));
        assert_eq!(url.path_segments().unwrap().count(), 4, "{id}");
    }
}

#[test]
fn repeated_query_params_and_upstream_names() {
    let req = build(
        search_patients(),
        json!({"identifier": ["MRN|1", "SSN|2"], "birthdate": "ge2000-01-01", "_count": 10, "given": "A&b=c"}),
    );
    assert_eq!(req.url().path(), "/fhir/R4/Patient");
    assert_eq!(
        req.url().query(),
        Some("identifier=MRN%7C1&identifier=SSN%7C2&given=A%26b%3Dc&birthDate=ge2000-01-01&_count=10")
    );
    let pairs: Vec<(String, String)> = req.url().query_pairs().into_owned().collect();
    assert_eq!(pairs.iter().filter(|(k, _)| k == "identifier").count(), 2);
    assert!(pairs.contains(&("given".into(), "A&b=c".into())));
}

#[test]
fn headers_and_bearer() {
    let m = search_patients();
    let valid = validate_params(m, &params(json!({"_id": "1", "x-trace": "t-1"}))).unwrap();
    let statics = [(
        HeaderName::from_static("epic-client-id"),
        HeaderValue::from_static("cid"),
    )];
    let req = build_request(&base(), &valid, &statics, "tok.en").unwrap();
    let h = req.headers();
    assert_eq!(h["accept"], "application/fhir+json");
    assert_eq!(h["authorization"], "Bearer tok.en");
    assert!(h["authorization"].is_sensitive());
    assert_eq!(h["epic-client-id"], "cid");
    assert_eq!(h["x-trace"], "t-1");
    assert!(req.body().is_none());

    let bad = [(
        HeaderName::from_static("authorization"),
        HeaderValue::from_static("x"),
    )];
    assert!(matches!(
        build_request(&base(), &valid, &bad, "t"),
        Err(EngineError::Definition(_))
    ));
    assert!(matches!(
        build_request(&base(), &valid, &[], "a\nb"),
        Err(EngineError::InvalidBearer)
    ));
}

#[test]
fn body_params_become_a_json_object() {
    let m = compiled("create");
    let req = build(
        m,
        json!({"resource": {"resourceType": "Parameters"}, "count": 3}),
    );
    assert_eq!(req.method(), reqwest::Method::POST);
    assert_eq!(req.url().path(), "/fhir/R4/Patient/$match");
    assert_eq!(req.headers()["content-type"], "application/fhir+json");
    let body: Value = serde_json::from_slice(req.body().unwrap().as_bytes().unwrap()).unwrap();
    assert_eq!(
        body,
        json!({"resource": {"resourceType": "Parameters"}, "_count": 3})
    );
}

#[test]
fn base_is_joined_by_concatenation() {
    let m = get_patient();
    let valid = validate_params(m, &params(json!({"id": "7"}))).unwrap();
    let no_slash = Url::parse("https://ehr.example.com/fhir/R4").unwrap();
    let req = build_request(&no_slash, &valid, &[], "t").unwrap();
    assert_eq!(
        req.url().as_str(),
        "https://ehr.example.com/fhir/R4/Patient/7"
    );
    let with_query = Url::parse("https://ehr.example.com/fhir/?x=1").unwrap();
    assert!(matches!(
        build_request(&with_query, &valid, &[], "t"),
        Err(EngineError::Definition(_))
    ));
    // A path that climbs out of the base never becomes a compiled method.
    let escaping = load_errors(
        r#"
[[methods]]
id = "m"
name = "m"
verb = "GET"
path = "../admin/{id}"
params = [{ name = "id", in = "path", required = true }]
"#,
    );
    assert!(
        escaping.contains("must not contain `.` or `..` segments"),
        "{escaping}"
    );
}

#[test]
fn validator_and_executor_share_one_compiled_method() {
    // One compiled object from the catalogue: its param pattern decides what validates, its
    // path template decides what is sent, and the request is built from the very method the
    // params were validated against.
    let m = compiled("get_document");
    let docid = m.param("docid").unwrap();
    assert_eq!(m.path.params().collect::<Vec<_>>(), [docid.name()]);

    // The pattern rejects what the compiled param rejects, and nothing is built.
    assert!(!docid.matches_pattern("A B"));
    let e = one_error(m, json!({"docid": "A B"}));
    assert_eq!(
        (e.field.as_str(), e.message.as_str()),
        ("docid", "must match the pattern [a-z0-9/]+")
    );

    // The pattern lets a `/` through; rendering still encodes the value as one segment.
    assert!(docid.matches_pattern("a/b"));
    let valid = validate_params(m, &params(json!({"docid": "a/b"}))).unwrap();
    assert!(
        std::ptr::eq(valid.method(), m),
        "the catalogue's own object"
    );
    let rendered = m
        .render_path(|name| (name == "docid").then_some("a/b"))
        .unwrap();
    assert_eq!(rendered, "DocumentReference/a%2Fb/$binary");
    let req = build_request(&base(), &valid, &[], "t").unwrap();
    assert_eq!(req.url().path(), format!("/fhir/R4/{rendered}"));
    assert_eq!(req.url().path_segments().unwrap().count(), 5);

    // Another method's params cannot be sent under this one: they carry their own method.
    let other = validate_params(get_patient(), &params(json!({"id": "a/b"}))).unwrap();
    let req = build_request(&base(), &other, &[], "t").unwrap();
    assert_eq!(req.url().path(), "/fhir/R4/Patient/a%2Fb");
}

#[test]
fn one_reserved_header_list_for_loader_and_engine() {
    for name in [
        h::AUTHORIZATION,
        h::HOST,
        h::CONTENT_LENGTH,
        h::TRANSFER_ENCODING,
        h::CONNECTION,
        h::COOKIE,
    ] {
        assert!(is_reserved_header(name.as_str()), "{name}");
        // The loader refuses it as a static header and as a header param...
        let title = name.as_str().to_ascii_uppercase();
        let src = HEAD.replacen("[headers]\n", &format!("[headers]\n{title} = \"x\"\n"), 1);
        let d = load_str(Path::new("t.toml"), &format!("{src}{METHODS}")).unwrap_err();
        assert!(
            load_problems(&d).contains("is set by the host and cannot be declared"),
            "{name}: {}",
            load_problems(&d)
        );
        let param = load_errors(&format!(
            r#"
[[methods]]
id = "m"
name = "m"
verb = "GET"
path = "X"
params = [{{ name = "h", upstream_name = "{title}", in = "header" }}]
"#
        ));
        assert!(
            param.contains("is set by the host and cannot be declared"),
            "{name}: {param}"
        );
        // ...and the engine refuses it when handed one anyway.
        let valid = validate_params(get_patient(), &params(json!({"id": "1"}))).unwrap();
        let statics = [(name.clone(), HeaderValue::from_static("x"))];
        assert!(
            matches!(
                build_request(&base(), &valid, &statics, "t"),
                Err(EngineError::Definition(_))
            ),
            "{name}"
        );
    }
    assert!(!is_reserved_header("epic-client-id"));
}

#[test]
fn static_headers_are_the_connectors_rendering() {
    let c = connector();
    let mut settings = BTreeMap::new();
    settings.insert(
        "base".to_owned(),
        "https://ehr.example.com/fhir/R4/".to_owned(),
    );
    settings.insert("client_id".to_owned(), "cid-1".to_owned());
    let ctx = c.context(settings.clone()).unwrap();
    let wire = static_headers(c, &ctx).unwrap();
    let rendered = c.render_headers(&ctx).unwrap();
    assert_eq!(
        rendered,
        [("Epic-Client-ID".to_owned(), "cid-1".to_owned())]
    );
    assert_eq!(wire.len(), rendered.len());
    for ((name, value), (rname, rvalue)) in wire.iter().zip(&rendered) {
        assert!(name.as_str().eq_ignore_ascii_case(rname));
        assert_eq!(value.to_str().unwrap(), rvalue);
    }
    let valid = validate_params(get_patient(), &params(json!({"id": "1"}))).unwrap();
    let req = build_request(&base(), &valid, &wire, "t").unwrap();
    assert_eq!(req.headers()["epic-client-id"], "cid-1");

    // A missing setting names the key; a value that is no header value names the header only.
    settings.remove("client_id");
    let err = static_headers(c, &c.context(settings.clone()).unwrap()).unwrap_err();
    assert!(err.to_string().contains("`client_id`"), "{err}");
    settings.insert("client_id".to_owned(), format!("{SECRET}\r\nX: y"));
    let ctx = TemplateContext::new(settings).with_fhir_base("https://ehr.example.com/fhir/R4/");
    let err = static_headers(c, &ctx).unwrap_err();
    assert!(matches!(err, EngineError::Definition(_)), "{err:?}");
    assert!(err.to_string().contains("Epic-Client-ID"), "{err}");
    assert!(!format!("{err} {err:?}").contains(SECRET));
}

// ---------------------------------------------------------------- next links

#[test]
fn next_links_relative_absolute_and_foreign() {
    let canvas = Url::parse("https://fumage-x.canvasmedical.com/").unwrap();
    let u = resolve_next_link(&canvas, "/Patient?_count=10&_offset=10").unwrap();
    assert_eq!(
        u.as_str(),
        "https://fumage-x.canvasmedical.com/Patient?_count=10&_offset=10"
    );

    let b = base();
    let ok = |link: &str| resolve_next_link(&b, link).map(|u| u.to_string());
    assert_eq!(
        ok("Patient?page=2").unwrap(),
        "https://ehr.example.com/fhir/R4/Patient?page=2"
    );
    assert_eq!(
        ok("/fhir/R4/Patient?page=2").unwrap(),
        "https://ehr.example.com/fhir/R4/Patient?page=2"
    );
    assert_eq!(
        ok("https://ehr.example.com/fhir/R4/Patient?page=2#x").unwrap(),
        "https://ehr.example.com/fhir/R4/Patient?page=2"
    );
    assert_eq!(
        ok("https://ehr.example.com:443/fhir/R4/Patient").unwrap(),
        "https://ehr.example.com/fhir/R4/Patient"
    );
    assert!(
        ok("https://EHR.example.com/FHIR/r4/Patient").is_ok(),
        "host and path case"
    );
    assert!(
        ok("https://ehr.example.com/fhir/R4?_getpages=abc").is_ok(),
        "HAPI style"
    );
    for foreign in [
        "https://evil.example.com/fhir/R4/Patient?page=2",
        "http://ehr.example.com/fhir/R4/Patient",
        "https://ehr.example.com:8443/fhir/R4/Patient",
        "https://ehr.example.com/other/Patient",
        "https://ehr.example.com/fhir/R4x/Patient",
        "/other/Patient",
        "../../admin",
        "//evil.example.com/fhir/R4/Patient",
        "https://user@ehr.example.com/fhir/R4/Patient",
        "javascript:alert(1)",
    ] {
        assert!(
            matches!(ok(foreign), Err(EngineError::ForeignNextLink)),
            "{foreign}"
        );
    }
}

// ---------------------------------------------------------------- error mapping

fn outcome(code: &str, epic: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({"resourceType": "OperationOutcome", "issue": [{
        "severity": "fatal", "code": code,
        "details": {"coding": [{"system": "urn:oid:1.2.840.114350.1.13.0.1.7.2.657369", "code": epic,
            "display": "Additional data may exist"}], "text": "Additional data\u{7} may exist"},
        "diagnostics": "d".repeat(400)
    }]}))
    .unwrap()
}

fn issues_of(body: &[u8]) -> Vec<OperationOutcomeIssue> {
    parse_outcome(body).issues
}

#[test]
fn operation_outcome_extraction() {
    let issues = issues_of(&outcome("processing", "4127"));
    assert_eq!(issues.len(), 1);
    let i = &issues[0];
    assert_eq!(i.severity, "fatal");
    assert_eq!(i.code, "processing");
    assert_eq!(i.details_code.as_deref(), Some("4127"));
    assert_eq!(i.details_text.as_deref(), Some("Additional data may exist"));
    assert_eq!(i.diagnostics.as_deref().map(str::len), Some(MAX_ISSUE_TEXT));
    assert!(parse_outcome(&outcome("processing", "4127")).search_too_broad);
    assert!(issues_of(br#"{"resourceType":"Patient","issue":[]}"#).is_empty());
    assert!(issues_of(b"<html>oops</html>").is_empty());
    let many = json!({"resourceType": "OperationOutcome", "issue": vec![json!({"severity": "error", "code": "x"}); 50]});
    assert_eq!(
        issues_of(&serde_json::to_vec(&many).unwrap()).len(),
        MAX_ISSUES
    );
}

#[test]
fn status_mapping() {
    let none = HeaderMap::new();
    let broad = outcome("processing", "4127");
    let other = outcome("invalid", "4100");
    assert!(matches!(
        status_error(400, &none, &broad),
        EngineError::SearchTooBroad { .. }
    ));
    assert!(matches!(
        status_error(422, &none, &broad),
        EngineError::SearchTooBroad { .. }
    ));
    assert!(
        matches!(status_error(400, &none, &other), EngineError::Rejected { status: 400, ref issues } if issues.len() == 1)
    );
    assert!(matches!(
        status_error(410, &none, b""),
        EngineError::Rejected { status: 410, .. }
    ));
    assert!(matches!(
        status_error(401, &none, &other),
        EngineError::Unauthorized
    ));
    assert!(
        matches!(status_error(403, &none, b""), EngineError::Forbidden { ref issues } if issues.is_empty())
    );
    assert!(matches!(
        status_error(404, &none, &other),
        EngineError::NotFound { .. }
    ));
    assert!(matches!(
        status_error(500, &none, &other),
        EngineError::UpstreamStatus { status: 500, .. }
    ));
    assert!(matches!(
        status_error(302, &none, b""),
        EngineError::UpstreamStatus { status: 302, .. }
    ));
    let mut h = HeaderMap::new();
    h.insert("retry-after", HeaderValue::from_static("5"));
    assert!(matches!(
        status_error(429, &h, b""),
        EngineError::Unavailable { status: 429, retry_after: Some(d) } if d == Duration::from_secs(5)
    ));
}

#[test]
fn response_body_concatenation_is_valid_json() {
    let out = MethodOutput {
        status: 200,
        body: bytes::Bytes::from_static(b" {\"resourceType\":\"Patient\",\"id\":\"1\"}\n"),
        pages: 1,
    };
    let v: Value = serde_json::from_slice(&out.to_response_body()).unwrap();
    assert_eq!(
        v,
        json!({"status": 200, "data": {"resourceType": "Patient", "id": "1"}, "pages": 1})
    );
    assert!(!format!("{out:?}").contains("Patient"));
}

// ---------------------------------------------------------------- execute against a mock EHR

fn outbound() -> Outbound {
    Outbound::new(OutboundConfig::danger_allow_insecure()).unwrap()
}

fn fhir(body: &str) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_raw(body.as_bytes().to_vec(), "application/fhir+json")
}

async fn run(
    server: &MockServer,
    m: &CompiledMethod,
    p: Value,
    max_pages: u32,
) -> Result<MethodOutput, EngineError> {
    let base = Url::parse(&format!("{}/fhir/R4/", server.uri())).unwrap();
    let valid = validate_params(m, &params(p)).unwrap();
    execute(
        &outbound(),
        MethodCall {
            fhir_base: &base,
            params: &valid,
            headers: &[],
            bearer: "tok",
            max_pages,
            search_params: &[],
            body: None,
        },
    )
    .await
}

#[tokio::test]
async fn single_page_passes_bytes_through() {
    let server = MockServer::start().await;
    let raw =
        "{ \"resourceType\" : \"Patient\",\n  \"id\":\"e1\", \"name\":[{\"family\":\"Lee\"}] }";
    Mock::given(method("GET"))
        .and(path("/fhir/R4/Patient/e1"))
        .and(header("authorization", "Bearer tok"))
        .and(header("accept", "application/fhir+json"))
        .respond_with(fhir(raw))
        .expect(1)
        .mount(&server)
        .await;
    let out = run(&server, get_patient(), json!({"id": "e1"}), 5)
        .await
        .unwrap();
    assert_eq!(out.status, 200);
    assert_eq!(out.pages, 1);
    assert_eq!(&out.body[..], raw.as_bytes(), "byte-identical");
    let v: Value = serde_json::from_slice(&out.to_response_body()).unwrap();
    assert_eq!(v["data"]["name"][0]["family"], "Lee");
}

#[tokio::test]
async fn non_json_success_is_refused_without_echo() {
    let server = MockServer::start().await;
    Mock::given(path("/fhir/R4/Patient/html"))
        .respond_with(
            ResponseTemplate::new(200).set_body_raw(format!("<p>{SECRET}</p>"), "text/html"),
        )
        .mount(&server)
        .await;
    Mock::given(path("/fhir/R4/Patient/broken"))
        .respond_with(fhir(&format!("{{\"name\":\"{SECRET}\"")))
        .mount(&server)
        .await;
    for id in ["html", "broken"] {
        let err = run(&server, get_patient(), json!({"id": id}), 1)
            .await
            .unwrap_err();
        assert!(
            matches!(err, EngineError::UpstreamNotJson { status: 200 }),
            "{id}: {err:?}"
        );
        assert!(!format!("{err} {err:?}").contains(SECRET));
    }
}

#[tokio::test]
async fn upstream_errors_are_mapped() {
    let server = MockServer::start().await;
    Mock::given(path("/fhir/R4/Patient/gone"))
        .respond_with(
            ResponseTemplate::new(404)
                .set_body_raw(outcome("not-found", "4102"), "application/fhir+json"),
        )
        .mount(&server)
        .await;
    Mock::given(path("/fhir/R4/Patient/expired"))
        .respond_with(ResponseTemplate::new(401))
        .mount(&server)
        .await;
    Mock::given(path("/fhir/R4/Patient"))
        .respond_with(
            ResponseTemplate::new(400)
                .set_body_raw(outcome("processing", "4127"), "application/fhir+json"),
        )
        .mount(&server)
        .await;
    let err = run(&server, get_patient(), json!({"id": "gone"}), 1)
        .await
        .unwrap_err();
    match err {
        EngineError::NotFound { issues } => {
            assert_eq!(issues[0].details_code.as_deref(), Some("4102"))
        }
        other => panic!("{other:?}"),
    }
    let err = run(&server, get_patient(), json!({"id": "expired"}), 1)
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::Unauthorized));
    let err = run(
        &server,
        search_patients(),
        json!({"family": "Lee", "given": "A", "birthdate": "1990"}),
        1,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, EngineError::SearchTooBroad { .. }), "{err:?}");
}

#[tokio::test]
async fn non_idempotent_throttle_is_not_retried() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(429).insert_header("Retry-After", "9"))
        .expect(1)
        .mount(&server)
        .await;
    let m = compiled("match_patients");
    let err = run(&server, m, json!({"resource": {}}), 1)
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        EngineError::Unavailable { status: 429, retry_after: Some(d) } if d == Duration::from_secs(9)
    ));
}

/// Three pages: page 1 links to page 2 origin-relative (Canvas style), page 2 links to page 3
/// base-relative, page 3 is the last.
async fn three_pages(server: &MockServer) {
    let page = |n: u32, next: Option<&str>| {
        let mut links =
            vec![json!({"relation": "self", "url": format!("/fhir/R4/Patient?page={n}")})];
        if let Some(next) = next {
            links.push(json!({"relation": "next", "url": next}));
        }
        json!({"resourceType": "Bundle", "type": "searchset", "total": 5, "link": links,
            "entry": (0..2).filter(|i| n < 3 || *i == 0)
                .map(|i| json!({"resource": {"resourceType": "Patient", "id": format!("p{n}-{i}")}}))
                .collect::<Vec<_>>()})
        .to_string()
    };
    Mock::given(path("/fhir/R4/Patient"))
        .and(query_param_is_missing("page"))
        .and(header("authorization", "Bearer tok"))
        .respond_with(fhir(&page(1, Some("/fhir/R4/Patient?page=2&_count=2"))))
        .mount(server)
        .await;
    Mock::given(path("/fhir/R4/Patient"))
        .and(query_param("page", "2"))
        .and(header("authorization", "Bearer tok"))
        .respond_with(fhir(&page(2, Some("Patient?page=3&_count=2"))))
        .mount(server)
        .await;
    Mock::given(path("/fhir/R4/Patient"))
        .and(query_param("page", "3"))
        .and(header("authorization", "Bearer tok"))
        .respond_with(fhir(&page(3, None)))
        .mount(server)
        .await;
}

fn ids(v: &Value) -> Vec<String> {
    v["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["id"].as_str().unwrap().to_owned())
        .collect()
}

fn next_link(v: &Value) -> Option<String> {
    v["link"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["relation"] == "next")
        .map(|l| l["url"].as_str().unwrap().to_owned())
}

#[tokio::test]
async fn paging_follows_relative_links_and_merges_entries() {
    let server = MockServer::start().await;
    three_pages(&server).await;
    let out = run(&server, search_patients(), json!({"_id": "x"}), 10)
        .await
        .unwrap();
    assert_eq!(out.pages, 3);
    let v: Value = serde_json::from_slice(&out.body).unwrap();
    assert_eq!(ids(&v), ["p1-0", "p1-1", "p2-0", "p2-1", "p3-0"]);
    assert_eq!(v["total"], 5);
    assert_eq!(v["resourceType"], "Bundle");
    assert_eq!(next_link(&v), None, "complete: no next link");
    assert_eq!(v["link"][0]["relation"], "self");
    let wrapped: Value = serde_json::from_slice(&out.to_response_body()).unwrap();
    assert_eq!(wrapped["pages"], 3);
    assert_eq!(server.received_requests().await.unwrap().len(), 3);
}

#[tokio::test]
async fn paging_stops_at_max_pages_and_keeps_next() {
    let server = MockServer::start().await;
    three_pages(&server).await;
    let out = run(&server, search_patients(), json!({"_id": "x"}), 2)
        .await
        .unwrap();
    assert_eq!(out.pages, 2);
    let v: Value = serde_json::from_slice(&out.body).unwrap();
    assert_eq!(ids(&v), ["p1-0", "p1-1", "p2-0", "p2-1"]);
    assert_eq!(
        next_link(&v).as_deref(),
        Some("Patient?page=3&_count=2"),
        "last fetched page's next"
    );

    // max_pages 1: the first page untouched, its next link included
    let out = run(&server, search_patients(), json!({"_id": "x"}), 1)
        .await
        .unwrap();
    assert_eq!(out.pages, 1);
    let v: Value = serde_json::from_slice(&out.body).unwrap();
    assert_eq!(
        next_link(&v).as_deref(),
        Some("/fhir/R4/Patient?page=2&_count=2")
    );
    assert_eq!(server.received_requests().await.unwrap().len(), 3);
}

#[tokio::test]
async fn foreign_next_link_is_never_followed() {
    let server = MockServer::start().await;
    let elsewhere = MockServer::start().await; // same IP, other port: another origin
    Mock::given(method("GET"))
        .respond_with(fhir(r#"{"resourceType":"Bundle","entry":[]}"#))
        .mount(&elsewhere)
        .await;
    let next = format!("{}/fhir/R4/Patient?page=2", elsewhere.uri());
    let body =
        json!({"resourceType": "Bundle", "link": [{"relation": "next", "url": next}], "entry": []});
    Mock::given(path("/fhir/R4/Patient"))
        .respond_with(fhir(&body.to_string()))
        .mount(&server)
        .await;
    let err = run(&server, search_patients(), json!({"_id": "x"}), 3)
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::ForeignNextLink), "{err:?}");
    assert!(
        elsewhere.received_requests().await.unwrap().is_empty(),
        "bearer never sent elsewhere"
    );
}

#[tokio::test]
async fn self_referencing_next_link_ends_paging() {
    let server = MockServer::start().await;
    let body = json!({"resourceType": "Bundle",
        "link": [{"relation": "next", "url": "Patient?page=2"}],
        "entry": [{"resource": {"id": "a"}}]});
    Mock::given(path("/fhir/R4/Patient"))
        .respond_with(fhir(&body.to_string()))
        .mount(&server)
        .await;
    let out = run(&server, search_patients(), json!({"_id": "x"}), 10)
        .await
        .unwrap();
    assert_eq!(out.pages, 2);
    let v: Value = serde_json::from_slice(&out.body).unwrap();
    assert_eq!(v["entry"].as_array().unwrap().len(), 2);
    assert_eq!(next_link(&v), None);
}

#[test]
fn every_upstream_answer_keeps_its_status_and_nothing_else_invents_one() {
    let none = HeaderMap::new();
    let broad = outcome("processing", "4127");
    let other = outcome("invalid", "4100");
    for (status, body) in [
        (400, &broad),
        (422, &broad),
        (400, &other),
        (401, &other),
        (403, &other),
        (404, &other),
        (410, &other),
        (429, &other),
        (500, &other),
        (503, &other),
        (302, &other),
    ] {
        assert_eq!(
            status_error(status, &none, body).upstream_status(),
            Some(status),
            "{status}"
        );
    }
    assert_eq!(
        EngineError::UpstreamNotJson { status: 200 }.upstream_status(),
        Some(200)
    );
    for e in [
        EngineError::Timeout,
        EngineError::ForeignNextLink,
        EngineError::TooLarge { limit: 10 },
        EngineError::Definition("m".into()),
    ] {
        assert_eq!(e.upstream_status(), None, "{e:?}");
    }
}

// --- writes: body validation, conditional create, no retry --------------------------------

fn observation() -> Value {
    json!({
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "SECRET-VALUE"},
        "identifier": [{"system": "urn:x sys", "value": "a|1"}],
    })
}

#[test]
fn write_body_is_checked_against_the_declared_shape() {
    let m = compiled("create_obs");
    let errs = validate_body(m, None).unwrap_err();
    assert_eq!(errs[0].field, "body");
    let errs =
        validate_body(m, Some(&json!({"resourceType": "Patient", "status": ""}))).unwrap_err();
    let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(fields, ["body.resourceType", "body.status", "body.code"]);
    let errs = validate_body(m, Some(&json!(["x"]))).unwrap_err();
    assert_eq!(errs[0].field, "body");
    // A method without a declared body refuses one; messages never echo values.
    let errs = validate_body(get_patient(), Some(&observation())).unwrap_err();
    assert_eq!(errs[0].field, "body");
    assert!(errs.iter().all(|e| !e.message.contains(SECRET)));
    assert!(validate_body(get_patient(), None).unwrap().is_none());

    let ok = validate_body(m, Some(&observation())).unwrap().unwrap();
    assert_eq!(
        ok.if_none_exist(),
        Some("identifier=urn%3Ax%20sys|a%7C1"),
        "system and value percent-encoded, one `|` between"
    );
    assert!(!format!("{ok:?}").contains(SECRET));
}

async fn run_write(server: &MockServer, body: &WriteBody) -> Result<MethodOutput, EngineError> {
    let base = Url::parse(&format!("{}/fhir/R4/", server.uri())).unwrap();
    let m = compiled("create_obs");
    let valid = validate_params(m, &Map::new()).unwrap();
    execute(
        &outbound(),
        MethodCall {
            fhir_base: &base,
            params: &valid,
            headers: &[],
            bearer: "tok",
            max_pages: 1,
            search_params: &[],
            body: Some(body),
        },
    )
    .await
}

#[tokio::test]
async fn create_sends_the_resource_with_if_none_exist() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/fhir/R4/Observation"))
        .and(header("content-type", "application/fhir+json"))
        .and(header("if-none-exist", "identifier=urn%3Ax%20sys|a%7C1"))
        .respond_with(ResponseTemplate::new(201).set_body_raw(
            r#"{"resourceType":"Observation","id":"o1"}"#,
            "application/fhir+json",
        ))
        .expect(1)
        .mount(&server)
        .await;
    let body = validate_body(compiled("create_obs"), Some(&observation()))
        .unwrap()
        .unwrap();
    let out = run_write(&server, &body).await.unwrap();
    assert_eq!(out.status, 201);
    let sent = &server.received_requests().await.unwrap()[0];
    let sent: Value = serde_json::from_slice(&sent.body).unwrap();
    assert_eq!(sent, observation());
}

#[tokio::test]
async fn failed_create_is_not_retried_and_has_unknown_outcome() {
    for status in [500u16, 503, 504] {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(status).insert_header("Retry-After", "0"))
            .expect(1)
            .mount(&server)
            .await;
        let body = validate_body(compiled("create_obs"), Some(&observation()))
            .unwrap()
            .unwrap();
        let err = run_write(&server, &body).await.unwrap_err();
        assert!(
            matches!(err, EngineError::WriteOutcomeUnknown { timed_out: false }),
            "{status}: {err:?}"
        );
    }
    // A 4xx says the EHR refused it: a known outcome.
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(422))
        .expect(1)
        .mount(&server)
        .await;
    let body = validate_body(compiled("create_obs"), Some(&observation()))
        .unwrap()
        .unwrap();
    let err = run_write(&server, &body).await.unwrap_err();
    assert!(
        matches!(err, EngineError::Rejected { status: 422, .. }),
        "{err:?}"
    );
}
