//! The one table that says, for every API route, who may call it: public, a scope (`read`, `write`, `admin` on its own tenant) or operators only; and the usage class a call counts in.
//!
//! **Invariant:** every entry of [`crate::routes::endpoints`] has a decision
//! in [`decision`]; a test walks the list, so a route added without one fails
//! the build's tests. At run time a route the table does not know is treated
//! as operators-only (fail closed).

use std::collections::HashMap;

use actix_web::http::Method;
use hub_core::tenancy::{RequestClass, Scope};

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone, without a key.
    Public,
    /// A principal holding the scope, for the request's tenant (which must
    /// be known and active).
    Scoped(Scope),
    /// The dashboard: `read` for a tenant's own figures; operators see every
    /// tenant's without acting for one, so the request's tenant is not
    /// admitted for them.
    Dashboard,
    /// The admin API on one tenant (`{tenant_id}` in the path): operators,
    /// or the `admin` scope of a key bound to that tenant.
    TenantAdmin,
    /// Operators only (tenant CRUD, `/metrics`).
    Operator,
}

impl Access {
    /// The usage class a request to such a route counts in; `None` for
    /// public routes.
    pub fn class(self) -> Option<RequestClass> {
        match self {
            Access::Public => None,
            Access::Scoped(Scope::Read) | Access::Dashboard => Some(RequestClass::Read),
            Access::Scoped(Scope::Write) => Some(RequestClass::Write),
            Access::Scoped(Scope::Admin) | Access::TenantAdmin | Access::Operator => {
                Some(RequestClass::Admin)
            }
        }
    }
}

/// The decision for one route, by its method and path template (as
/// [`crate::routes::Endpoint`] spells them); `None` for a route nobody
/// decided about.
pub fn decision(method: &Method, path: &str) -> Option<Access> {
    use Access::*;
    let m = method.as_str();
    Some(match (m, path) {
        ("GET", "/health" | "/health/ready") => Public,
        (
            "GET",
            "/api/v1/discovery/services"
            | "/api/v1/discovery/services/{service_name}"
            | "/api/v1/discovery/watch",
        ) => Scoped(Scope::Read),
        ("POST", "/api/v1/discovery/register" | "/api/v1/discovery/heartbeat")
        | ("DELETE", "/api/v1/discovery/services/{service_name}") => Scoped(Scope::Write),
        (
            "GET",
            "/api/v1/dashboard/metrics" | "/api/v1/dashboard/health" | "/api/v1/dashboard/services",
        ) => Dashboard,
        ("GET", "/metrics") => Operator,
        ("POST" | "GET", "/api/v1/admin/tenants")
        | ("GET" | "PATCH" | "DELETE", "/api/v1/admin/tenants/{tenant_id}") => Operator,
        ("POST" | "GET", "/api/v1/admin/tenants/{tenant_id}/keys")
        | ("DELETE", "/api/v1/admin/tenants/{tenant_id}/keys/{key_id}")
        | (
            "GET",
            "/api/v1/admin/tenants/{tenant_id}/usage" | "/api/v1/admin/tenants/{tenant_id}/audit",
        ) => TenantAdmin,
        _ => return None,
    })
}

/// The decisions of every served route, for matching request paths at run
/// time: exact paths in a map, paths with parameters by segments.
#[derive(Debug, Default)]
pub struct AccessTable {
    exact: HashMap<String, Vec<(Method, Access)>>,
    templated: Vec<(Method, Vec<Segment>, Access)>,
}

#[derive(Debug, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param,
}

impl AccessTable {
    /// The table of every entry of [`crate::routes::endpoints`]; a route
    /// without a decision is operators-only.
    pub fn new() -> Self {
        let mut table = Self::default();
        for e in crate::routes::endpoints() {
            let access = decision(&e.method, &e.path).unwrap_or(Access::Operator);
            if e.path.contains('{') {
                let segments = e
                    .path
                    .split('/')
                    .map(|s| {
                        if s.starts_with('{') {
                            Segment::Param
                        } else {
                            Segment::Literal(s.to_owned())
                        }
                    })
                    .collect();
                table.templated.push((e.method, segments, access));
            } else {
                table
                    .exact
                    .entry(e.path)
                    .or_default()
                    .push((e.method, access));
            }
        }
        table
    }

    /// The decision for a request, or `None` when no route matches (the
    /// router answers 404 or 405 then).
    pub fn lookup(&self, method: &Method, path: &str) -> Option<Access> {
        if let Some(routes) = self.exact.get(path) {
            return routes
                .iter()
                .find(|(m, _)| m == method)
                .map(|(_, access)| *access);
        }
        self.templated
            .iter()
            .find(|(m, segments, _)| {
                m == method && {
                    let mut parts = path.split('/');
                    segments.iter().all(|s| match (s, parts.next()) {
                        (Segment::Literal(l), Some(p)) => l == p,
                        (Segment::Param, Some(p)) => !p.is_empty(),
                        (_, None) => false,
                    }) && parts.next().is_none()
                }
            })
            .map(|(_, _, access)| *access)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn every_route_has_a_decision() {
        let undecided: Vec<String> = crate::routes::endpoints()
            .iter()
            .filter(|e| decision(&e.method, &e.path).is_none())
            .map(|e| format!("{e:?}"))
            .collect();
        assert!(
            undecided.is_empty(),
            "routes without an access decision in access::decision: {undecided:?}"
        );
    }

    #[test]
    fn requests_match_their_route() {
        let table = AccessTable::new();
        assert_eq!(
            table.lookup(&Method::GET, "/api/v1/discovery/services/api"),
            Some(Access::Scoped(Scope::Read))
        );
        assert_eq!(
            table.lookup(&Method::DELETE, "/api/v1/discovery/services/api"),
            Some(Access::Scoped(Scope::Write))
        );
        assert_eq!(
            table.lookup(&Method::DELETE, "/api/v1/admin/tenants/acme/keys/0123"),
            Some(Access::TenantAdmin)
        );
        assert_eq!(
            table.lookup(&Method::GET, "/api/v1/admin/tenants"),
            Some(Access::Operator)
        );
        assert_eq!(table.lookup(&Method::GET, "/health"), Some(Access::Public));
        assert_eq!(
            table.lookup(&Method::GET, "/api/v1/discovery/services/a/b"),
            None
        );
        assert_eq!(
            table.lookup(&Method::GET, "/api/v1/discovery/services/"),
            None
        );
        assert_eq!(table.lookup(&Method::PUT, "/health"), None);
    }
}
