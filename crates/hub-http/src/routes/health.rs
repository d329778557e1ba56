//! Public health routes: liveness (`/health`) and readiness (`/health/ready`).

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use chrono::Utc;
use hub_core::Registry;

use crate::dto::{HealthBody, ReadyBody, ReadyComponents};
use crate::error::{ApiError, ErrorBody};

/// Liveness: the process serves HTTP. Touches no backend, so an outage of a
/// store never makes an orchestrator restart healthy replicas.
#[utoipa::path(
    get,
    path = "/health",
    tag = "health",
    operation_id = "health_live",
    summary = "Liveness (public)",
    responses((status = 200, description = "The process serves HTTP.", body = HealthBody)),
)]
pub(crate) async fn live() -> HttpResponse {
    HttpResponse::Ok().json(HealthBody {
        status: "healthy",
        service: "central-hub",
        version: env!("CARGO_PKG_VERSION"),
        timestamp: Utc::now(),
    })
}

/// Readiness: the source of truth answers. 503 `store_unavailable` otherwise.
#[utoipa::path(
    get,
    path = "/health/ready",
    tag = "health",
    operation_id = "health_ready",
    summary = "Readiness: the source of truth answers (public)",
    responses(
        (status = 200, description = "The store answers.", body = ReadyBody),
        (status = 503, description = "`store_unavailable`: the store does not answer.", body = ErrorBody,
            example = json!({"error": {"code": "store_unavailable", "message": "the store backend is unavailable; retry later", "request_id": "5b0f3c52-4c1e-4a0e-9a57-2f7e1c1d0b6e"}})),
    ),
)]
pub(crate) async fn ready(registry: web::Data<Registry>) -> Result<HttpResponse, ApiError> {
    match registry.check_store().await {
        Ok(()) => Ok(HttpResponse::Ok().json(ReadyBody {
            status: "ready",
            components: ReadyComponents { store: "up" },
        })),
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
