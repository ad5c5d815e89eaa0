//! The tonic interceptor every service's calls pass.

use super::issuers::refused;
use super::*;

/// Tonic interceptor: validates the `authorization: Bearer …` header, applies the caller's rate
/// limit, and stores the [`Caller`].
#[derive(Clone)]
pub struct AuthInterceptor {
    auth: Arc<Authenticator>,
    limiter: Arc<crate::ratelimit::RateLimiter>,
}

impl AuthInterceptor {
    /// Validates with `auth` and limits with `limits`.
    pub fn new(auth: Arc<Authenticator>, limits: crate::ratelimit::RateLimits) -> Self {
        Self {
            auth,
            limiter: Arc::new(crate::ratelimit::RateLimiter::new(limits)),
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
        let mut caller = self.auth.authenticate(token.trim())?;
        caller.request_id = uuid::Uuid::new_v4().simple().to_string();
        if let Some(kind) = req.extensions().get::<crate::telemetry::CallerKind>() {
            kind.set(caller.role.as_str());
        }
        self.limiter.check(caller.role, &caller.subject)?;
        req.extensions_mut().insert(caller);
        Ok(req)
    }
}
