//! gRPC adapter of the notify service: the caller check, proto ⇄ domain, and the one mapping
//! of [`NotifyError`] to a gRPC status.

use crate::domain::{self, Channels, Language, Preferences};
use crate::error::NotifyError;
use crate::service::Notify;
use econsult_proto::notify::v1 as pb;
use econsult_runtime::auth::Caller;
use econsult_runtime::grpc::{anyhow_status, db_status, timestamp};
use econsult_runtime::proxy::{Area, Resolver};
use tonic::{Request, Response, Status};

/// The tonic service.
pub struct NotifyGrpc {
    notify: Notify,
    proxies: Resolver,
}

impl From<NotifyError> for Status {
    fn from(e: NotifyError) -> Self {
        match e {
            NotifyError::Invalid { .. } => Status::invalid_argument(e.to_string()),
            NotifyError::Db(d) => db_status("notify", d),
            NotifyError::Unaccounted(u) => Status::invalid_argument(u.to_string()),
            NotifyError::Other(o) => anyhow_status("notify", o),
        }
    }
}

impl TryFrom<pb::Preferences> for Preferences {
    type Error = NotifyError;

    fn try_from(p: pb::Preferences) -> Result<Self, NotifyError> {
        let email = (!p.email.trim().is_empty())
            .then(|| domain::email(&p.email, "preferences.email"))
            .transpose()?;
        let phone = (!p.phone.trim().is_empty())
            .then(|| domain::phone(&p.phone, "preferences.phone"))
            .transpose()?;
        let mut chosen = Channels::default();
        for (i, c) in p.channels.iter().enumerate() {
            match pb::Channel::try_from(*c) {
                Ok(pb::Channel::Sms) => chosen.sms = true,
                Ok(pb::Channel::Email) => chosen.email = true,
                _ => {
                    return Err(NotifyError::invalid(
                        format!("preferences.channels[{i}]"),
                        "is not a known channel",
                    ));
                }
            }
        }
        let language = match pb::Language::try_from(p.language) {
            Ok(pb::Language::Unspecified | pb::Language::Nb) => Language::Nb,
            Ok(pb::Language::Nn) => Language::Nn,
            Ok(pb::Language::En) => Language::En,
            Err(_) => {
                return Err(NotifyError::invalid(
                    "preferences.language",
                    "is not a known language",
                ));
            }
        };
        Ok(Preferences {
            email,
            phone,
            channels: (chosen != Channels::default()).then_some(chosen),
            reminder_minutes: p.reminder_lead_minutes,
            language,
            opted_out: p.opted_out,
        })
    }
}

fn to_proto(p: Preferences) -> pb::Preferences {
    let mut channels = Vec::new();
    if let Some(c) = p.channels {
        if c.sms {
            channels.push(pb::Channel::Sms as i32);
        }
        if c.email {
            channels.push(pb::Channel::Email as i32);
        }
    }
    pb::Preferences {
        email: p.email.unwrap_or_default(),
        phone: p.phone.unwrap_or_default(),
        channels,
        reminder_lead_minutes: p.reminder_minutes,
        language: match p.language {
            Language::Nb => pb::Language::Nb,
            Language::Nn => pb::Language::Nn,
            Language::En => pb::Language::En,
        } as i32,
        opted_out: p.opted_out,
    }
}

impl NotifyGrpc {
    /// The adapter over `notify`; `proxies` resolves whom a patient call acts for.
    pub fn new(notify: Notify, proxies: Resolver) -> Self {
        Self { notify, proxies }
    }

    /// The tonic server.
    pub fn into_server(self) -> pb::notify_service_server::NotifyServiceServer<Self> {
        pb::notify_service_server::NotifyServiceServer::new(self)
    }
}

#[tonic::async_trait]
impl pb::notify_service_server::NotifyService for NotifyGrpc {
    #[tracing::instrument(skip_all)]
    async fn get_preferences(
        &self,
        req: Request<pb::GetPreferencesRequest>,
    ) -> Result<Response<pb::Preferences>, Status> {
        let mut caller = Caller::from_request(&req)?.clone();
        let nin = self.proxies.subject(&mut caller, Area::Booking).await?;
        let p = self.notify.preferences(&caller, &nin).await?;
        Ok(Response::new(to_proto(p)))
    }

    #[tracing::instrument(skip_all)]
    async fn set_preferences(
        &self,
        req: Request<pb::SetPreferencesRequest>,
    ) -> Result<Response<pb::Preferences>, Status> {
        let mut caller = Caller::from_request(&req)?.clone();
        let nin = self.proxies.subject(&mut caller, Area::Booking).await?;
        let p = req
            .get_ref()
            .preferences
            .clone()
            .ok_or_else(|| Status::invalid_argument("preferences is required"))?;
        let p = Preferences::try_from(p)?;
        let p = self.notify.set_preferences(&caller, &nin, p).await?;
        Ok(Response::new(to_proto(p)))
    }

    #[tracing::instrument(skip_all)]
    async fn list_dead_letters(
        &self,
        req: Request<pb::ListDeadLettersRequest>,
    ) -> Result<Response<pb::ListDeadLettersResponse>, Status> {
        Caller::from_request(&req)?.ops()?;
        let limit = match req.get_ref().limit {
            0 => 100,
            n => n.min(1000),
        };
        let rows = self.notify.dead_letters(limit).await?;
        Ok(Response::new(pb::ListDeadLettersResponse {
            dead_letters: rows
                .into_iter()
                .map(|(d, status)| pb::DeadLetter {
                    message_id: d.message_id,
                    kind: d.kind,
                    channel: d.channel,
                    status: status.as_str().into(),
                    attempts: u32::try_from(d.attempts).unwrap_or(0),
                    reason: d.reason,
                    at: Some(timestamp(econsult_runtime::clock::from_ms(d.done_at))),
                })
                .collect(),
        }))
    }
}
