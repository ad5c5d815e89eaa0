//! The tonic interceptor every service's calls pass.

use super::issuers::refused;
use super::*;

/// Tonic interceptor: validates the `authorization: Bearer …` header, applies the caller's rate
/// limit and, on a streaming call, its cap on open streams, and stores the [`Caller`].
#[derive(Clone)]
pub struct AuthInterceptor {
    auth: Arc<Authenticator>,
    limiter: Arc<crate::ratelimit::RateLimiter>,
    streams: Arc<crate::streams::StreamLimiter>,
}

impl AuthInterceptor {
    /// Validates with `auth`, limits with `limits` and allows each caller `max_streams` open
    /// streams (0 = no cap).
    pub fn new(
        auth: Arc<Authenticator>,
        limits: crate::ratelimit::RateLimits,
        max_streams: u32,
    ) -> Self {
        Self {
            auth,
            limiter: Arc::new(crate::ratelimit::RateLimiter::new(limits)),
            streams: crate::streams::StreamLimiter::new(max_streams),
        }
    }
}

impl tonic::service::Interceptor for AuthInterceptor {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        let header = req
            .metadata()
            .get("authorization")
            .ok_or_else(|| refused("missing", Status::unauthenticated("missing bearer token")))?;
        let value = header.to_str().map_err(|_| {
            refused(
                "malformed",
                Status::unauthenticated("malformed authorization header"),
            )
        })?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .ok_or_else(|| {
                refused(
                    "malformed",
                    Status::unauthenticated("authorization must be a bearer token"),
                )
            })?;
        let mut caller = tracing::info_span!("authenticate", otel.name = "authenticate token")
            .in_scope(|| self.auth.authenticate(token.trim()))?;
        caller.request_id = uuid::Uuid::new_v4().simple().to_string();
        caller.synthetic_numbers = self.auth.accepts_synthetic();
        let synthetic_in_token = caller.nin.as_ref().is_some_and(NationalId::is_synthetic)
            || caller.proxy.represents.iter().any(|r| r.nin.is_synthetic());
        if synthetic_in_token && !caller.synthetic_numbers {
            return Err(refused(
                "synthetic",
                Status::unauthenticated(
                    "the token names a synthetic test identity number, which this server does \
                     not accept (only development and test environments do)",
                ),
            ));
        }
        crate::telemetry::record_id("request_id", &caller.request_id);
        crate::telemetry::record_id("caller_role", caller.role.as_str());
        if let Some(org) = &caller.org_number {
            crate::telemetry::record_id("org_number", org);
        }
        if let Some(v) = req.metadata().get(ON_BEHALF_OF_HEADER) {
            let nin = v
                .to_str()
                .ok()
                .and_then(|v| NationalId::parse(v).ok())
                .ok_or_else(|| {
                    Status::invalid_argument(format!(
                        "{ON_BEHALF_OF_HEADER} is not a valid identity number"
                    ))
                })?;
            caller.accept_nin(&nin, ON_BEHALF_OF_HEADER)?;
            caller.proxy.on_behalf_of = Some(nin);
        }
        if let Some(kind) = req.extensions().get::<crate::telemetry::CallerKind>() {
            kind.set(caller.role.as_str());
        }
        self.limiter.check(caller.role, &caller.subject)?;
        if let Some(slot) = req.extensions().get::<crate::streams::StreamSlot>() {
            slot.hold(self.streams.acquire(&caller.subject)?);
        }
        req.extensions_mut().insert(caller);
        Ok(req)
    }
}
