//! Dev-only test support: a throwaway PostgreSQL cluster, local protocol-enforcing upstreams
//! (FHIR R4 server, OAuth 2.0 server, the npm `oidc-provider`), all on 127.0.0.1, and the one
//! `both_backends!` macro and `Backend` enum every suite runs its tests on both backends with.

pub mod backends;
pub mod bulk;
pub mod fhir;
pub mod oauth;
pub mod oidc;
pub mod pg;

pub use backends::Backend;
