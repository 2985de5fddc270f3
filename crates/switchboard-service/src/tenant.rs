//! The authenticated tenant of a request. Depends on nothing else in the crate.

/// The tenant a request is authenticated as. Only [`crate::keys::KeyService::authenticate`]
/// creates one, so a function taking `&TenantCtx` is tenant-scoped by its signature.
#[derive(Debug, Clone)]
pub struct TenantCtx {
    pub(crate) tenant_id: String,
    pub(crate) key_id: String,
}

impl TenantCtx {
    pub fn tenant_id(&self) -> &str {
        &self.tenant_id
    }
    pub fn key_id(&self) -> &str {
        &self.key_id
    }
}
