//! `HubClient`: one typed method per hub call (register, heartbeat, deregister, list, get, watch) over one pooled HTTP connection set.

use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{Method, RequestBuilder, Response};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::error::HubError;
use crate::types::{
    Block, DeregisteredBody, HeartbeatRequest, Instance, InstanceList, Lease, ListBody, ListQuery,
    RegistrationSpec, ServiceBody, ServiceInstances,
};

/// The header of a blocking-query answer: the revision it reflects.
pub(crate) const INDEX_HEADER: &str = "x-hub-index";

/// A client of one Central Hub, acting for one tenant with one API key.
///
/// Cheap to clone (the connection pool is shared). Every call but
/// [`HubClient::watch`] and blocking queries is bounded by the request
/// timeout.
#[derive(Clone)]
pub struct HubClient {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    http: reqwest::Client,
    /// The base URL without a trailing `/`.
    base: String,
    tenant: Option<String>,
    request_timeout: Duration,
    pub(crate) watch_idle_timeout: Duration,
}

impl std::fmt::Debug for HubClient {
    // The API key is left out: it is a secret, and Debug output ends up in logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubClient")
            .field("base", &self.inner.base)
            .field("tenant", &self.inner.tenant)
            .finish_non_exhaustive()
    }
}

/// Configures a [`HubClient`]; see [`HubClient::builder`].
pub struct HubClientBuilder {
    url: String,
    api_key: Option<String>,
    tenant: Option<String>,
    request_timeout: Duration,
    connect_timeout: Duration,
    watch_idle_timeout: Duration,
}

impl std::fmt::Debug for HubClientBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubClientBuilder")
            .field("url", &self.url)
            .field("tenant", &self.tenant)
            .finish_non_exhaustive()
    }
}

impl HubClientBuilder {
    /// The `X-API-Key` sent with every request.
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(key.into());
        self
    }

    /// The `X-Tenant-ID` sent with every request (the hub's default is
    /// `system`, or a bound key's first tenant).
    pub fn tenant(mut self, tenant: impl Into<String>) -> Self {
        self.tenant = Some(tenant.into());
        self
    }

    /// The bound on each ordinary call (default 10 s).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// The bound on opening a TCP (and TLS) connection (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long a watch stream may stay silent before it is taken for dead
    /// (default 45 s: three of the hub's default 15 s keep-alives).
    pub fn watch_idle_timeout(mut self, timeout: Duration) -> Self {
        self.watch_idle_timeout = timeout;
        self
    }

    pub fn build(self) -> Result<HubClient, HubError> {
        let url = reqwest::Url::parse(&self.url)
            .map_err(|e| HubError::Config(format!("hub URL {:?}: {e}", self.url)))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(HubError::Config(format!(
                "hub URL {:?}: the scheme must be http or https",
                self.url
            )));
        }
        let mut headers = HeaderMap::new();
        if let Some(key) = &self.api_key {
            let mut value = HeaderValue::from_str(key)
                .map_err(|_| HubError::Config("the API key is not a valid header value".into()))?;
            // Keeps the key out of reqwest's own Debug output.
            value.set_sensitive(true);
            headers.insert("x-api-key", value);
        }
        if let Some(tenant) = &self.tenant {
            let value = HeaderValue::from_str(tenant).map_err(|_| {
                HubError::Config(format!("tenant {tenant:?} is not a valid header value"))
            })?;
            headers.insert("x-tenant-id", value);
        }
        if url.scheme() == "https" && !cfg!(feature = "tls") {
            return Err(HubError::Config(format!(
                "hub URL {:?}: https needs hub-client's `tls` feature",
                self.url
            )));
        }
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true);
        #[cfg(feature = "tls")]
        let http = http.tls_backend_preconfigured(tls_config()?);
        let http = http
            .build()
            .map_err(|e| HubError::Config(format!("HTTP client: {e}")))?;
        Ok(HubClient {
            inner: Arc::new(Inner {
                http,
                base: self.url.trim_end_matches('/').to_owned(),
                tenant: self.tenant,
                request_timeout: self.request_timeout,
                watch_idle_timeout: self.watch_idle_timeout,
            }),
        })
    }
}

/// With the `tls` feature: rustls with the ring provider, handed to reqwest whole: reqwest's own
/// default would be aws-lc-rs (a C build this project avoids), and
/// installing a process-wide default provider would decide for the
/// application that embeds this crate. Certificates are checked by the
/// platform's verifier (the system's trust store), as reqwest would.
#[cfg(feature = "tls")]
fn tls_config() -> Result<rustls::ClientConfig, HubError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls_platform_verifier::Verifier::new(provider.clone())
        .map_err(|e| HubError::Config(format!("TLS certificate verifier: {e}")))?;
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| HubError::Config(format!("TLS versions: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth())
}

#[derive(Deserialize)]
struct ErrorEnvelope {
    error: ErrorBody,
}

#[derive(Deserialize)]
struct ErrorBody {
    code: String,
    message: String,
    #[serde(default)]
    request_id: Option<String>,
}

impl HubClient {
    /// Starts configuring a client of the hub at `url` (`http://host:port`).
    pub fn builder(url: impl Into<String>) -> HubClientBuilder {
        HubClientBuilder {
            url: url.into(),
            api_key: None,
            tenant: None,
            request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            watch_idle_timeout: Duration::from_secs(45),
        }
    }

    /// The hub's base URL.
    pub fn base_url(&self) -> &str {
        &self.inner.base
    }

    pub(crate) fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.inner
            .http
            .request(method, format!("{}{path}", self.inner.base))
    }

    /// Sends a request; an answer of any status is `Ok`.
    pub(crate) async fn send(&self, request: RequestBuilder) -> Result<Response, HubError> {
        request
            .send()
            .await
            .map_err(|source| HubError::Unreachable {
                url: self.inner.base.clone(),
                source,
            })
    }

    /// Sends a bounded request and reads a success body as `T`.
    async fn call<T: DeserializeOwned>(
        &self,
        request: RequestBuilder,
    ) -> Result<(T, Option<u64>), HubError> {
        let response = self
            .send(request.timeout(self.inner.request_timeout))
            .await?;
        self.read(response).await
    }

    /// Reads an answer: `T` and the `X-Hub-Index` header on success, the
    /// typed error otherwise.
    pub(crate) async fn read<T: DeserializeOwned>(
        &self,
        response: Response,
    ) -> Result<(T, Option<u64>), HubError> {
        let response = error_for_status(response, &self.inner.base).await?;
        let status = response.status().as_u16();
        let index = index_of(&response);
        let bytes = response
            .bytes()
            .await
            .map_err(|source| HubError::Unreachable {
                url: self.inner.base.clone(),
                source,
            })?;
        let body = serde_json::from_slice(&bytes).map_err(|e| HubError::InvalidResponse {
            status,
            detail: e.to_string(),
        })?;
        Ok((body, index))
    }

    /// Registers (or updates) an instance once, with no lease kept alive:
    /// the plain `POST /api/v1/discovery/register`. Most services want
    /// [`HubClient::register`], which keeps it alive.
    pub async fn register_once(&self, spec: &RegistrationSpec) -> Result<Instance, HubError> {
        let request = self
            .request(Method::POST, "/api/v1/discovery/register")
            .json(spec);
        Ok(self.call(request).await?.0)
    }

    /// Renews a lease. A 404 ([`HubError::is_not_found`]) means the hub
    /// does not know the instance (it expired, or the hub lost its state):
    /// register it again.
    pub async fn heartbeat(&self, heartbeat: &HeartbeatRequest) -> Result<Lease, HubError> {
        let request = self
            .request(Method::POST, "/api/v1/discovery/heartbeat")
            .json(heartbeat);
        Ok(self.call(request).await?.0)
    }

    /// Deregisters one instance, or every instance of the service when
    /// `instance_id` is `None`; answers how many were removed (404 when
    /// there was nothing to remove).
    pub async fn deregister(
        &self,
        service_name: &str,
        instance_id: Option<&str>,
    ) -> Result<usize, HubError> {
        let mut request = self.request(Method::DELETE, &service_path(service_name)?);
        if let Some(id) = instance_id {
            request = request.query(&[("instance_id", id)]);
        }
        let (body, _) = self.call::<DeregisteredBody>(request).await?;
        Ok(body.deregistered)
    }

    /// One page of the tenant's instances. With [`ListQuery::block`] set this
    /// is a blocking query, held by the hub until the tenant's revision
    /// passes the index or the wait ends.
    pub async fn list(&self, query: &ListQuery) -> Result<InstanceList, HubError> {
        let mut request = self
            .request(Method::GET, "/api/v1/discovery/services")
            .query(&query.pairs());
        request = request.timeout(self.timeout_for(query.block.as_ref()));
        let response = self.send(request).await?;
        let (body, index): (ListBody, _) = self.read(response).await?;
        Ok(InstanceList {
            instances: body.services,
            revision: body.revision,
            next_cursor: body.next_cursor,
            index,
        })
    }

    /// The instances of one service (404 `not_found` when it has none).
    pub async fn get(&self, service_name: &str) -> Result<ServiceInstances, HubError> {
        self.get_service(service_name, None).await
    }

    /// A blocking query on one service: answered once its revision passes
    /// `block.index` or `block.wait` ends. A hub without blocking queries
    /// answers at once, without [`ServiceInstances::index`].
    pub async fn get_blocking(
        &self,
        service_name: &str,
        block: Block,
    ) -> Result<ServiceInstances, HubError> {
        self.get_service(service_name, Some(block)).await
    }

    async fn get_service(
        &self,
        service_name: &str,
        block: Option<Block>,
    ) -> Result<ServiceInstances, HubError> {
        let mut request = self.request(Method::GET, &service_path(service_name)?);
        if let Some(block) = &block {
            request = request.query(&block.pairs());
        }
        request = request.timeout(self.timeout_for(block.as_ref()));
        let response = self.send(request).await?;
        let (body, index): (ServiceBody, _) = self.read(response).await?;
        Ok(ServiceInstances {
            service_name: body.service_name,
            instances: body.instances,
            revision: body.revision,
            index,
        })
    }

    /// The bound on a request: the ordinary one, or for a blocking query
    /// its wait plus the hub's jitter (up to 1/16 of it, as Consul adds)
    /// plus the ordinary bound for the answer itself.
    pub(crate) fn timeout_for(&self, block: Option<&Block>) -> Duration {
        match block {
            Some(block) => block.wait + block.wait / 16 + self.inner.request_timeout,
            None => self.inner.request_timeout,
        }
    }
}

/// `/api/v1/discovery/services/{name}`; a name that would change the path
/// is refused here (the hub's names never contain these characters).
pub(crate) fn service_path(service_name: &str) -> Result<String, HubError> {
    if service_name.is_empty()
        || service_name
            .bytes()
            .any(|b| matches!(b, b'/' | b'?' | b'#' | b'%') || b.is_ascii_whitespace())
    {
        return Err(HubError::Config(format!(
            "{service_name:?} is not a service name"
        )));
    }
    Ok(format!("/api/v1/discovery/services/{service_name}"))
}

/// The `X-Hub-Index` of an answer, when the hub sent one.
pub(crate) fn index_of(response: &Response) -> Option<u64> {
    response
        .headers()
        .get(INDEX_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// The response itself on success; on an error status, the typed error
/// read from the hub's error body.
pub(crate) async fn error_for_status(response: Response, base: &str) -> Result<Response, HubError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let status = status.as_u16();
    let bytes = response
        .bytes()
        .await
        .map_err(|source| HubError::Unreachable {
            url: base.to_owned(),
            source,
        })?;
    match serde_json::from_slice::<ErrorEnvelope>(&bytes) {
        Ok(ErrorEnvelope { error }) => Err(HubError::Api {
            status,
            code: error.code,
            message: error.message,
            request_id: error.request_id,
        }),
        Err(_) => Err(HubError::InvalidResponse {
            status,
            detail: format!(
                "not an error body: {:?}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::HubClient;
    use crate::HubError;

    #[test]
    fn a_bad_url_or_header_is_a_configuration_error() {
        for url in ["not a url", "ftp://hub:21", "localhost:7000"] {
            let err = HubClient::builder(url).build().unwrap_err();
            assert!(matches!(err, HubError::Config(_)), "{url}: {err:?}");
        }
        let err = HubClient::builder("http://hub:7000")
            .tenant("bad\ntenant")
            .build()
            .unwrap_err();
        assert!(matches!(err, HubError::Config(_)), "{err:?}");
    }

    #[test]
    fn the_api_key_never_shows_in_debug_output() {
        let client = HubClient::builder("http://hub:7000/")
            .api_key("secret-key-123")
            .tenant("t1")
            .build()
            .unwrap();
        assert_eq!(client.base_url(), "http://hub:7000");
        let debug = format!("{client:?}");
        assert!(!debug.contains("secret-key-123"), "{debug}");
    }

    #[cfg(not(feature = "tls"))]
    #[test]
    fn https_needs_the_tls_feature() {
        let err = HubClient::builder("https://hub:7443").build().unwrap_err();
        assert!(err.to_string().contains("`tls` feature"), "{err}");
    }

    /// An https client really speaks TLS: a plain-HTTP server that answers
    /// 200 to anything is not an answer to it.
    #[cfg(feature = "tls")]
    #[tokio::test]
    async fn an_https_client_speaks_tls() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let _ = socket.read(&mut buf).await;
                let _ = socket
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}")
                    .await;
            }
        });
        let plain = HubClient::builder(format!("http://127.0.0.1:{port}"))
            .build()
            .unwrap();
        let tls = HubClient::builder(format!("https://127.0.0.1:{port}"))
            .build()
            .unwrap();
        let query = crate::ListQuery::default();
        // The plain client reads the (wrong-shaped) answer; the TLS one
        // cannot complete a handshake with it.
        let plain_err = plain.list(&query).await.unwrap_err();
        assert!(
            matches!(plain_err, HubError::InvalidResponse { status: 200, .. }),
            "{plain_err:?}"
        );
        let tls_err = tls.list(&query).await.unwrap_err();
        assert!(
            matches!(tls_err, HubError::Unreachable { .. }),
            "{tls_err:?}"
        );
    }
}
