//! Dev-only test support: a throwaway PostgreSQL cluster, local protocol-enforcing upstreams
//! (FHIR R4 server, OAuth 2.0 server, the npm `oidc-provider`), all on 127.0.0.1.

pub mod fhir;
pub mod oauth;
pub mod oidc;
pub mod pg;
