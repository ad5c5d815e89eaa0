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
        accountability(&mut caller, req.metadata())?;
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

/// Reads the call's purpose ([`PURPOSE_HEADER`]) and, for an EHR system, the person it acts for
/// ([`ACTING_NAME_HEADER`] or [`ACTING_NAME_BIN_HEADER`], [`ACTING_HPR_HEADER`]) into `caller`.
/// Whether they are required is decided where the access is logged ([`crate::audit`]); here a
/// malformed value, or one the caller's role may not send, is INVALID_ARGUMENT naming it.
pub(super) fn accountability(
    caller: &mut Caller,
    md: &tonic::metadata::MetadataMap,
) -> Result<(), Status> {
    let invalid = |m: String| Err(Status::invalid_argument(m));
    if let Some(v) = md.get(PURPOSE_HEADER) {
        if caller.role == Role::Patient {
            return invalid(format!(
                "{PURPOSE_HEADER} is for health personnel, EHR systems and operations"
            ));
        }
        match v.to_str().ok().and_then(Purpose::parse) {
            Some(p) => caller.purpose = Some(p),
            None => {
                return invalid(format!(
                    "{PURPOSE_HEADER} must be treatment, administration, quality-assurance or operations"
                ));
            }
        }
    }
    let name = match md.get_bin(ACTING_NAME_BIN_HEADER) {
        Some(v) => Some(
            v.to_bytes()
                .ok()
                .and_then(|b| String::from_utf8(b.to_vec()).ok())
                .ok_or_else(|| {
                    Status::invalid_argument(format!("{ACTING_NAME_BIN_HEADER} is not UTF-8"))
                })?,
        ),
        None => md
            .get(ACTING_NAME_HEADER)
            .map(|v| {
                v.to_str().map(str::to_owned).map_err(|_| {
                    Status::invalid_argument(format!(
                        "{ACTING_NAME_HEADER} must be ASCII (use {ACTING_NAME_BIN_HEADER})"
                    ))
                })
            })
            .transpose()?,
    };
    let hpr = md
        .get(ACTING_HPR_HEADER)
        .map(|v| v.to_str().map_or(String::new(), |s| s.trim().to_owned()));
    if name.is_none() && hpr.is_none() {
        return Ok(());
    }
    if caller.role != Role::Ehr {
        return invalid(format!(
            "{ACTING_NAME_HEADER} and {ACTING_HPR_HEADER} are for EHR system calls"
        ));
    }
    let name = name.map(|n| n.trim().to_owned()).unwrap_or_default();
    if name.is_empty() || name.chars().count() > 200 || name.chars().any(char::is_control) {
        return invalid(format!(
            "{ACTING_NAME_HEADER} must name the acting person (1 to 200 characters)"
        ));
    }
    if let Some(h) = &hpr
        && (h.is_empty() || h.len() > 9 || !h.bytes().all(|b| b.is_ascii_digit()))
    {
        return invalid(format!(
            "{ACTING_HPR_HEADER} must be an HPR number (digits)"
        ));
    }
    caller.acting_person = Some(ActingPerson {
        name,
        hpr_number: hpr,
    });
    Ok(())
}
