//! Per-request context (request id, resolved tenant) kept in a task-local for the life of a request.
//!
//! The request-id middleware opens the scope around everything downstream, so
//! code that has no access to the request (for example an error being turned
//! into a response) can still name the request id in its body.

use std::cell::RefCell;
use std::future::Future;

use hub_core::TenantId;

/// What is known about the request being served.
#[derive(Debug)]
pub(crate) struct RequestContext {
    request_id: String,
    tenant: RefCell<Option<TenantId>>,
}

tokio::task_local! {
    static CONTEXT: RequestContext;
}

impl RequestContext {
    /// Runs `fut` with a context for `request_id`.
    pub(crate) async fn scope<F: Future>(request_id: String, fut: F) -> F::Output {
        CONTEXT
            .scope(
                RequestContext {
                    request_id,
                    tenant: RefCell::new(None),
                },
                fut,
            )
            .await
    }
}

/// The current request id, or `"-"` outside a request.
pub(crate) fn request_id() -> String {
    CONTEXT
        .try_with(|c| c.request_id.clone())
        .unwrap_or_else(|_| "-".to_owned())
}

/// Records the tenant the request acts for (set by the tenant middleware).
pub(crate) fn set_tenant(tenant: &TenantId) {
    let _ = CONTEXT.try_with(|c| *c.tenant.borrow_mut() = Some(tenant.clone()));
}

/// The tenant the request acts for, once resolved.
pub(crate) fn tenant() -> Option<TenantId> {
    CONTEXT
        .try_with(|c| c.tenant.borrow().clone())
        .ok()
        .flatten()
}
