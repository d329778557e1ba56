//! Route tables: the one list of API routes ([`endpoints`]) that both the application and the OpenAPI document are built from.
//!
//! Each handler carries its `#[utoipa::path]` annotation (method, path,
//! parameters, responses); an entry of [`endpoints`] pairs that annotation
//! with the handler. [`configure`] mounts every entry at the path and method
//! its annotation names, and [`crate::openapi::document`] describes every
//! entry: a route cannot be served undocumented, nor documented unserved.
//! Adding a route is adding one line to [`endpoints`].

pub mod admin;
pub mod dashboard;
pub mod dashboard_health;
pub mod discovery;
pub mod health;
pub mod prometheus;
pub mod watch;

use actix_web::http::Method;
use actix_web::{Route, web};
use utoipa::openapi::path::{HttpMethod, Operation};
use utoipa::openapi::{RefOr, Schema};
use utoipa_actix_web::OpenApiFactory;

/// One API route: where and how it is served, and its description.
pub struct Endpoint {
    /// The path, parameters in braces (actix and OpenAPI write them alike):
    /// `/api/v1/discovery/services/{service_name}`.
    pub path: String,
    /// The one method it answers.
    pub method: Method,
    /// The same method, as the document spells it.
    pub(crate) http_method: HttpMethod,
    /// Its OpenAPI operation, as annotated on the handler.
    pub(crate) operation: Operation,
    /// How many methods the annotation named (one, checked by a test).
    #[cfg_attr(not(test), allow(dead_code))]
    annotated_methods: usize,
    /// The schemas its bodies name.
    pub(crate) schemas: Vec<(String, RefOr<Schema>)>,
    /// The handler, not yet guarded by the method.
    route: Route,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.method, self.path)
    }
}

/// Pairs a handler's `#[utoipa::path]` annotation (`doc`, the `__path_*`
/// type the macro generates) with the handler (`web::to(handler)`).
fn endpoint<D: utoipa::Path + OpenApiFactory>(doc: D, route: Route) -> Endpoint {
    let mut schemas = Vec::new();
    doc.schemas(&mut schemas);
    // An annotation names one method (`every_endpoint_has_one_method_and_a_unique_route`).
    let methods = D::methods();
    let annotated_methods = methods.len();
    let http_method = methods.into_iter().next().unwrap_or(HttpMethod::Get);
    let method = actix_method(&http_method);
    Endpoint {
        path: D::path(),
        route: route.method(method.clone()),
        method,
        http_method,
        operation: D::operation(),
        annotated_methods,
        schemas,
    }
}

fn actix_method(method: &HttpMethod) -> Method {
    match method {
        HttpMethod::Get => Method::GET,
        HttpMethod::Post => Method::POST,
        HttpMethod::Put => Method::PUT,
        HttpMethod::Delete => Method::DELETE,
        HttpMethod::Options => Method::OPTIONS,
        HttpMethod::Head => Method::HEAD,
        HttpMethod::Patch => Method::PATCH,
        HttpMethod::Trace => Method::TRACE,
    }
}

/// Every API route the server serves, in the order the document lists them.
/// **Invariant:** the application mounts no API route outside this list
/// (the docs routes of [`crate::openapi::configure_docs`] aside).
pub fn endpoints() -> Vec<Endpoint> {
    vec![
        endpoint(health::__path_live, web::to(health::live)),
        endpoint(health::__path_ready, web::to(health::ready)),
        endpoint(discovery::__path_register, web::to(discovery::register)),
        endpoint(discovery::__path_heartbeat, web::to(discovery::heartbeat)),
        endpoint(discovery::__path_list, web::to(discovery::list)),
        endpoint(
            discovery::__path_get_service,
            web::to(discovery::get_service),
        ),
        endpoint(discovery::__path_deregister, web::to(discovery::deregister)),
        endpoint(watch::__path_watch, web::to(watch::watch)),
        endpoint(dashboard::__path_metrics, web::to(dashboard::metrics)),
        endpoint(
            dashboard_health::__path_health,
            web::to(dashboard_health::health),
        ),
        endpoint(
            dashboard_health::__path_services,
            web::to(dashboard_health::services),
        ),
        endpoint(prometheus::__path_scrape, web::to(prometheus::scrape)),
        endpoint(admin::__path_create_tenant, web::to(admin::create_tenant)),
        endpoint(admin::__path_list_tenants, web::to(admin::list_tenants)),
        endpoint(admin::__path_get_tenant, web::to(admin::get_tenant)),
        endpoint(admin::__path_update_tenant, web::to(admin::update_tenant)),
        endpoint(admin::__path_delete_tenant, web::to(admin::delete_tenant)),
        endpoint(admin::__path_create_key, web::to(admin::create_key)),
        endpoint(admin::__path_list_keys, web::to(admin::list_keys)),
        endpoint(admin::__path_revoke_key, web::to(admin::revoke_key)),
        endpoint(admin::__path_usage, web::to(admin::usage)),
        endpoint(admin::__path_audit, web::to(admin::audit)),
    ]
}

/// Mounts every entry of [`endpoints`]: one resource per path, one route per
/// method, so a known path asked with another method answers 405.
pub fn configure(cfg: &mut web::ServiceConfig) {
    let mut resources: Vec<(String, Vec<Route>)> = Vec::new();
    for e in endpoints() {
        match resources.iter_mut().find(|(path, _)| *path == e.path) {
            Some((_, routes)) => routes.push(e.route),
            None => resources.push((e.path, vec![e.route])),
        }
    }
    for (path, routes) in resources {
        cfg.service(
            routes
                .into_iter()
                .fold(web::resource(path), |resource, route| resource.route(route)),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_endpoint_has_one_method_and_a_unique_route() {
        let mut seen = std::collections::HashSet::new();
        for e in endpoints() {
            assert_eq!(e.annotated_methods, 1, "{e:?}");
            assert!(
                seen.insert((e.method.clone(), e.path.clone())),
                "{e:?} twice"
            );
            assert!(e.path.starts_with('/'), "{e:?}");
        }
    }
}
