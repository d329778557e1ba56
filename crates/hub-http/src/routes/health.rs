//! Public health routes: liveness (`/health`) and readiness (`/health/ready`).

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use chrono::Utc;
use hub_core::Registry;
use serde_json::json;

use crate::dto::HealthBody;
use crate::error::ApiError;

/// Mounts `/health` and `/health/ready`.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/health").route(web::get().to(live)))
        .service(web::resource("/health/ready").route(web::get().to(ready)));
}

/// Liveness: the process serves HTTP. Touches no backend, so an outage of a
/// store never makes an orchestrator restart healthy replicas.
async fn live() -> HttpResponse {
    HttpResponse::Ok().json(HealthBody {
        status: "healthy",
        service: "central-hub",
        version: env!("CARGO_PKG_VERSION"),
        timestamp: Utc::now(),
    })
}

/// Readiness: the source of truth answers. 503 `store_unavailable` otherwise.
async fn ready(registry: web::Data<Registry>) -> Result<HttpResponse, ApiError> {
    match registry.check_store().await {
        Ok(()) => Ok(HttpResponse::Ok().json(json!({
            "status": "ready",
            "components": { "store": "up" }
        }))),
        Err(error) => {
            let api: ApiError = error.into();
            if api.code() == "store_unavailable" {
                Err(api)
            } else {
                Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    "the registry store is not ready",
                ))
            }
        }
    }
}
