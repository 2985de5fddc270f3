//! `[[include]]`: taking library methods, narrowing them, and the `file:line` diagnostics of bad
//! includes (unknown library, method, param or narrow target; cycles; a broken library).

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::catalog::Connector;
use crate::load::{load_dir, load_file, Diagnostic};

/// A fresh directory under the system temp dir holding `files` (path, content).
fn dir_with(files: &[(&str, &str)]) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "switchboard-include-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = fs::remove_dir_all(&dir);
    for (path, content) in files {
        let p = dir.join(path);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, content).unwrap();
    }
    dir
}

const HEAD: &str = r#"
id = "acme"
name = "Acme"
version = "1.0.0"
fhir_base = "https://fhir.example/"

[[auth]]
type = "static_bearer"
token = "{{settings.token}}"

[[settings]]
key = "token"
label = "Token"
secret = true
"#;

const LIB: &str = r#"
description = "test library"

[[methods]]
id = "get_thing"
name = "Get Thing"
verb = "GET"
path = "Thing/{id}"
scope = "user/Thing.read"

[[methods.params]]
name = "id"
in = "path"
required = true

[[methods]]
id = "search_things"
name = "Search Things"
verb = "GET"
path = "Thing"
scope = "user/Thing.read"
paging = "fhir_bundle"
require_one_of = [["patient"]]

[[methods.params]]
name = "patient"
in = "query"

[[methods.params]]
name = "birthdate"
in = "query"
type = "date"

[[methods.params]]
name = "_count"
in = "query"
type = "integer"
maximum = 1000
"#;

fn show(d: &[Diagnostic]) -> String {
    d.iter().map(|x| format!("{x}\n")).collect()
}

fn line_of(src: &str, marker: &str) -> usize {
    src.lines()
        .position(|l| l.contains(marker))
        .unwrap_or_else(|| panic!("marker {marker:?} not in source"))
        + 1
}

#[test]
fn include_takes_and_narrows_library_methods_after_the_own_ones() {
    let conn = format!(
        r#"{HEAD}
[[methods]]
id = "own"
name = "Own"
verb = "GET"
path = "Own"

[[include]]
library = "_lib/things.toml"
methods = ["search_things"]

[include.narrow.search_things]
description = "Narrowed."
scope = "patient/Thing.rs"
require_one_of = [["patient", "birthdate"]]
drop_params = ["_count"]

[include.narrow.search_things.params.birthdate]
upstream_name = "birthDate"
pattern = '\d{{4}}-\d{{2}}-\d{{2}}'
"#
    );
    let dir = dir_with(&[("acme.toml", &conn), ("_lib/things.toml", LIB)]);
    let def = load_file(&dir.join("acme.toml")).unwrap_or_else(|d| panic!("{}", show(&d)));
    let ids: Vec<&str> = def.methods.iter().map(|m| m.id.as_str()).collect();
    // Only the methods taken, after the file's own; the library's get_thing is not offered.
    assert_eq!(ids, ["own", "search_things"]);
    let m = &def.methods[1];
    assert_eq!(m.description.as_deref(), Some("Narrowed."));
    assert_eq!(m.scope.as_deref(), Some("patient/Thing.rs"));
    assert_eq!(m.require_one_of, vec![vec!["patient", "birthdate"]]);
    assert!(m.param("_count").is_none());
    let bd = m.param("birthdate").unwrap();
    assert_eq!(bd.wire_name(), "birthDate");
    // The narrowed param compiles into the one CompiledMethod model.
    let c = Connector::new(def).unwrap();
    let cm = c.method("search_things").unwrap();
    assert!(cm.param("birthdate").unwrap().matches_pattern("2001-02-03"));
    assert!(!cm.param("birthdate").unwrap().matches_pattern("2001"));
    assert!(!cm.satisfies_required_combinations(|n| n == "patient"));
    assert!(cm.satisfies_required_combinations(|n| n == "patient" || n == "birthdate"));

    // The directory loader takes the library for no connector (it is in a subdirectory).
    let catalog = load_dir(&dir).unwrap_or_else(|d| panic!("{}", show(&d)));
    assert_eq!(catalog.ids().collect::<Vec<_>>(), ["acme"]);
    let _ = fs::remove_dir_all(dir);
}

#[test]
fn bad_includes_are_reported_on_their_lines() {
    let conn = format!(
        r#"{HEAD}
[[include]]
library = "_lib/things.toml"
methods = ["get_thing", "get_nothing"]

[include.narrow.search_things]
description = "not taken"

[include.narrow.get_thing]
drop_params = ["nope"]

[include.narrow.get_thing.params.ghost]
description = "no such param"

[[include]]
library = "../outside.toml"
methods = []

[[include]]
library = "_lib/missing.toml"
methods = []
"#
    );
    let dir = dir_with(&[("acme.toml", &conn), ("_lib/things.toml", LIB)]);
    let d = load_file(&dir.join("acme.toml")).unwrap_err();
    let expect = [
        (
            line_of(&conn, "get_nothing"),
            "unknown method `get_nothing`",
        ),
        (
            line_of(&conn, "narrow.search_things]"),
            "narrows `search_things`, which this include does not take",
        ),
        (line_of(&conn, "\"nope\""), "has no param `nope` to drop"),
        (
            line_of(&conn, "params.ghost]"),
            "`get_thing` has no param `ghost`",
        ),
        (line_of(&conn, "../outside.toml"), "must be a relative path"),
        (line_of(&conn, "_lib/missing.toml"), "cannot be used"),
    ];
    for (line, text) in expect {
        assert!(
            d.iter().any(|x| x.file.ends_with("acme.toml")
                && x.line == line
                && x.message.contains(text)),
            "expected acme.toml:{line}: {text}\ngot:\n{}",
            show(&d)
        );
    }
    // The missing library is reported as itself, too.
    assert!(
        d.iter()
            .any(|x| x.file.ends_with("missing.toml") && x.message.contains("cannot read library")),
        "{}",
        show(&d)
    );
    assert_eq!(d.len(), expect.len() + 1, "{}", show(&d));
    let _ = fs::remove_dir_all(dir);
}

#[test]
fn include_cycles_and_broken_libraries_are_diagnosed() {
    let conn = format!(
        r#"{HEAD}
[[include]]
library = "_lib/a.toml"
methods = ["get_thing"]

[[include]]
library = "_lib/broken.toml"
methods = ["x"]
"#
    );
    let a = r#"
[[include]]
library = "b.toml"
methods = ["get_thing"]
"#;
    let b = r#"
[[include]]
library = "a.toml"
methods = ["get_thing"]
"#;
    let broken =
        "[[methods]]\nid = \"x\"\nname = \"X\"\nverb = \"GET\"\npath = \"X\"\ncolour = \"red\"\n";
    let dir = dir_with(&[
        ("acme.toml", &conn),
        ("_lib/a.toml", a),
        ("_lib/b.toml", b),
        ("_lib/broken.toml", broken),
    ]);
    let d = load_file(&dir.join("acme.toml")).unwrap_err();
    // The cycle is reported where it closes: b.toml's include of a.toml.
    assert!(
        d.iter().any(|x| x.file.ends_with("b.toml")
            && x.line == line_of(b, "a.toml")
            && x.message
                .contains("include cycle: acme.toml -> a.toml -> b.toml -> a.toml")),
        "{}",
        show(&d)
    );
    // An unknown key in a library: its own file and line.
    assert!(
        d.iter().any(|x| x.file.ends_with("broken.toml")
            && x.line == line_of(broken, "colour")
            && x.message.contains("colour")),
        "{}",
        show(&d)
    );
    let _ = fs::remove_dir_all(dir);
}

#[test]
fn a_problem_in_an_included_method_points_at_the_include() {
    let conn = format!(
        r#"{HEAD}
[[include]]
library = "_lib/things.toml"
methods = ["search_things"]

[include.narrow.search_things]
require_one_of = [["nobody"]]
"#
    );
    let dir = dir_with(&[("acme.toml", &conn), ("_lib/things.toml", LIB)]);
    let d = load_file(&dir.join("acme.toml")).unwrap_err();
    assert_eq!(d.len(), 1, "{}", show(&d));
    assert_eq!(d[0].line, line_of(&conn, "[[include]]"), "{}", show(&d));
    assert!(
        d[0].message.starts_with(
            "include[0]: method `search_things` from `_lib/things.toml`: methods[0].require_one_of"
        ),
        "{}",
        show(&d)
    );
    let _ = fs::remove_dir_all(dir);
}

#[test]
fn shipped_connectors_take_the_us_core_library() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../connectors");
    let catalog = load_dir(&dir).unwrap_or_else(|d| panic!("{}", show(&d)));
    let ids = |c: &str| -> Vec<String> {
        catalog
            .get(c)
            .unwrap()
            .methods()
            .iter()
            .map(|m| m.id().to_owned())
            .collect()
    };
    for c in ["epic", "canvas", "medplum"] {
        let ids = ids(c);
        assert_eq!(&ids[..2], ["get_patient", "search_patients"], "{c}");
        for m in [
            "get_observation",
            "search_observations",
            "search_immunizations",
        ] {
            assert!(ids.iter().any(|i| i == m), "{c} lacks {m}");
        }
        for m in catalog.get(c).unwrap().methods() {
            assert!(m.def.scope.is_some(), "{c}.{} has no scope", m.id());
        }
    }
    assert!(ids("medplum").contains(&"patient_everything".to_owned()));
    assert!(!ids("epic").contains(&"patient_everything".to_owned()));
    assert!(!ids("canvas").contains(&"get_binary".to_owned()));
    let epic = catalog.get("epic").unwrap();
    let obs = epic.method("search_observations").unwrap();
    assert!(obs.param("_count").is_none());
    assert!(!obs.satisfies_required_combinations(|n| n == "patient"));
    let canvas = catalog.get("canvas").unwrap();
    let count = canvas
        .method("search_conditions")
        .unwrap()
        .param("_count")
        .unwrap();
    assert_eq!(count.def.maximum, Some(100));
}
