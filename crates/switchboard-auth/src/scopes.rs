//! Granted-scope checks: does the scope string a token response granted cover the scope a
//! method declares? Understands SMART v1 (`patient/Observation.read`, `.write`, `.*`), SMART v2
//! (`patient/Observation.rs`, `?param=value` constraints ignored, i.e. treated as granting) and
//! Epic's API names (`Patient.read Patient.search`, any letter case), which Epic returns instead
//! of SMART strings (EHR-FACTS §1 "Scopes").
//!
//! Resource and permission decide; the context prefix (`patient/`, `user/`, `system/`) does not:
//! it follows the install's persona (a client-credentials install is granted `system/` scopes for
//! methods declared with `user/`), and the EHR enforces the context itself.

/// The permission letters of SMART v2, in their canonical order.
const CRUDS: &str = "cruds";

/// One granted or declared resource scope: resource (`*` = any) and permission letters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceScope {
    pub resource: String,
    pub perms: String,
}

/// Parses one scope token; `None` for tokens that are not resource scopes (`openid`,
/// `launch/patient`, `offline_access`, ...).
pub fn parse_scope(token: &str) -> Option<ResourceScope> {
    let token = token.split('?').next().unwrap_or(token);
    let (smart, rest) = match token.split_once('/') {
        Some(("patient" | "user" | "system", rest)) => (true, rest),
        Some(_) => return None,
        None => (false, token),
    };
    let (resource, action) = rest.rsplit_once('.')?;
    let valid_resource = resource == "*"
        || (!resource.is_empty() && resource.chars().all(|c| c.is_ascii_alphanumeric()));
    if !valid_resource {
        return None;
    }
    let perms = if smart {
        match action {
            "read" => "rs".to_owned(),
            "write" => "cud".to_owned(),
            "*" => CRUDS.to_owned(),
            v2 if !v2.is_empty() && v2.chars().all(|c| CRUDS.contains(c)) => v2.to_owned(),
            _ => return None,
        }
    } else {
        // Epic API names: `Patient.Read`, `Patient.Search`, `Patient.Create`, ...
        match action.to_ascii_lowercase().as_str() {
            "read" => "r".to_owned(),
            "search" => "s".to_owned(),
            "create" => "c".to_owned(),
            "update" => "u".to_owned(),
            "delete" => "d".to_owned(),
            _ => return None,
        }
    };
    Some(ResourceScope {
        resource: resource.to_owned(),
        perms,
    })
}

/// Whether `granted` (a space-separated scope string) covers the `declared` scope of a method.
/// `interaction` is the permission the call needs (`r` read, `s` search, `c`, `u`, `d`): when
/// the declared scope includes it, only it is required (a read needs no search right), otherwise
/// everything the declared scope names. A declared scope that is not a resource scope is not
/// checked (true).
pub fn covers(granted: &str, declared: &str, interaction: Option<char>) -> bool {
    let Some(want) = parse_scope(declared) else {
        return true;
    };
    let needed: String = match interaction {
        Some(p) if want.perms.contains(p) => p.to_string(),
        _ => want.perms.clone(),
    };
    let mut have = String::new();
    for g in granted.split_whitespace().filter_map(parse_scope) {
        if g.resource == "*" || g.resource == want.resource {
            have.push_str(&g.perms);
        }
    }
    needed.chars().all(|p| have.contains(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_v1_v2_and_epic_names() {
        let p = |s: &str| parse_scope(s).map(|r| (r.resource, r.perms));
        assert_eq!(
            p("patient/Observation.read"),
            Some(("Observation".into(), "rs".into()))
        );
        assert_eq!(p("user/Patient.rs"), Some(("Patient".into(), "rs".into())));
        assert_eq!(p("system/*.cruds"), Some(("*".into(), "cruds".into())));
        assert_eq!(p("user/*.*"), Some(("*".into(), "cruds".into())));
        assert_eq!(
            p("patient/Observation.rs?category=laboratory"),
            Some(("Observation".into(), "rs".into()))
        );
        assert_eq!(p("Patient.Read"), Some(("Patient".into(), "r".into())));
        assert_eq!(p("Patient.search"), Some(("Patient".into(), "s".into())));
        for not_resource in [
            "openid",
            "fhirUser",
            "launch/patient",
            "offline_access",
            "patient/Observation.x",
            "foo/Bar.read",
            "Patient",
        ] {
            assert_eq!(parse_scope(not_resource), None, "{not_resource}");
        }
    }

    #[test]
    fn v1_and_v2_grant_each_other() {
        assert!(covers(
            "patient/Observation.read",
            "patient/Observation.rs",
            None
        ));
        assert!(covers(
            "patient/Observation.rs",
            "patient/Observation.read",
            None
        ));
        assert!(covers(
            "openid user/*.read",
            "user/Observation.read",
            Some('s')
        ));
        assert!(!covers(
            "patient/Observation.r",
            "patient/Observation.rs",
            Some('s')
        ));
        assert!(covers(
            "patient/Observation.r",
            "patient/Observation.rs",
            Some('r')
        ));
        assert!(!covers(
            "openid fhirUser user/Patient.read",
            "user/Observation.read",
            Some('s')
        ));
        assert!(!covers("", "user/Observation.read", Some('r')));
        // The context follows the persona.
        assert!(covers(
            "system/Observation.read",
            "user/Observation.read",
            Some('r')
        ));
    }

    #[test]
    fn epic_api_names() {
        let granted = "Patient.read Patient.search";
        assert!(covers(granted, "user/Patient.read", Some('r')));
        assert!(covers(granted, "user/Patient.read", Some('s')));
        assert!(!covers("Patient.read", "user/Patient.read", Some('s')));
        assert!(!covers(granted, "user/Observation.read", Some('r')));
    }

    #[test]
    fn undeclared_or_odd_declarations_are_not_checked() {
        assert!(covers("", "openid", None));
        assert!(covers("", "not a scope", Some('r')));
    }
}
