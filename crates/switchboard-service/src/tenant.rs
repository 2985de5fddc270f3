//! The authenticated tenant of a request. Depends on nothing else in the crate.

/// The tenant a request is authenticated as. Only [`crate::keys::KeyService::authenticate`]
/// creates one (and a submitted connect link, for the tenant and API key that created it:
/// `connect::submit_connect`), so a function taking `&TenantCtx` is tenant-scoped by its
/// signature.
#[derive(Debug, Clone)]
pub struct TenantCtx {
    pub(crate) tenant_id: String,
    pub(crate) key_id: String,
    /// The request's id (for the audit trail), when the API layer set one.
    pub(crate) request_id: Option<String>,
}

impl TenantCtx {
    pub fn tenant_id(&self) -> &str {
        &self.tenant_id
    }
    pub fn key_id(&self) -> &str {
        &self.key_id
    }
    pub fn request_id(&self) -> Option<&str> {
        self.request_id.as_deref()
    }
    /// The same tenant and key, for the request `request_id`.
    pub fn with_request_id(mut self, request_id: Option<String>) -> Self {
        self.request_id = request_id;
        self
    }
}
