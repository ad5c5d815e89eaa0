//! `econsult.consultation.v1.ConsultationService`, the adapter: the caller check, proto ⇄
//! domain conversion ([`convert`]), the call of [`Consultations`], and the one mapping of
//! [`ConsultationError`] to a gRPC status. The logic, the transactions and the SQL are in
//! [`crate::service`] and [`crate::store`].

mod convert;
mod stream;

use crate::error::ConsultationError;
use crate::feed::Feed;
use crate::service::patient::NewThread;
use crate::service::practice::{Closing, NewReply, page};
use crate::service::{Consultations, Done, Viewer};
use crate::urgent::Language;
use econsult_proto::consultation::v1 as pb;
use econsult_runtime::auth::{Caller, Role};
use econsult_runtime::grpc::{anyhow_status, db_status, internal, no_nul, no_nuls};
use econsult_runtime::idempotency::IdempotencyError;
use econsult_runtime::platform::Platform;
use econsult_runtime::proxy::{Area, Resolver};
use stream::ChangeStream;
use tonic::{Request, Response, Status};

pub use crate::service::{TOPIC_MESSAGE, TOPIC_READ, TOPIC_STATE};

/// Scope to read threads of the organisation.
pub const SCOPE_READ: &str = "econsult:consultation.read";
/// Scope to act on threads of the organisation.
pub const SCOPE_WRITE: &str = "econsult:consultation.write";

impl From<ConsultationError> for Status {
    fn from(e: ConsultationError) -> Self {
        match e {
            ConsultationError::Invalid(m) => Status::invalid_argument(m),
            ConsultationError::NotFound(m) => Status::not_found(m),
            ConsultationError::FailedPrecondition(m) => Status::failed_precondition(m),
            ConsultationError::PermissionDenied(m) => Status::permission_denied(m),
            ConsultationError::ResourceExhausted(m) => Status::resource_exhausted(m),
            ConsultationError::Idempotency(e) => match e {
                IdempotencyError::KeyReused => Status::already_exists(e.to_string()),
                IdempotencyError::BadKey => Status::invalid_argument(e.to_string()),
                IdempotencyError::Db(db) => db_status("idempotency", db),
                IdempotencyError::Codec(c) => internal("idempotency", c),
            },
            ConsultationError::Booking(e) => Status::from(e),
            ConsultationError::Db(e) => db_status("consultation", e),
            ConsultationError::Unaccounted(u) => Status::invalid_argument(u.to_string()),
            ConsultationError::Outbox(e) => anyhow_status("outbox", e),
            ConsultationError::Internal { context, message } => internal(context, message),
        }
    }
}

/// How a stored record replays in gRPC: the first response, decoded.
trait StoredAnswer {
    /// This record with `response`, the answer the call is about to send, to replay as is.
    #[cfg(test)]
    fn answering(self, response: &impl prost::Message) -> Self;
    /// The stored first response, `None` in a record from before responses were stored.
    fn first<R: prost::Message + Default>(&self) -> Result<Option<R>, Status>;
}

impl StoredAnswer for Done {
    #[cfg(test)]
    fn answering(self, response: &impl prost::Message) -> Self {
        self.answering_bytes(&response.encode_to_vec())
    }

    fn first<R: prost::Message + Default>(&self) -> Result<Option<R>, Status> {
        let Some(bytes) = self.first_bytes()? else {
            return Ok(None);
        };
        R::decode(bytes.as_slice())
            .map(Some)
            .map_err(|e| internal("stored response", e))
    }
}

/// An encoder for a command's answer that keeps the response it encodes in `slot`: the call
/// that ran the command sends it as built.
fn keeping<T, R: prost::Message>(
    slot: &mut Option<R>,
    make: impl FnOnce(&T) -> R,
) -> impl FnOnce(&T) -> Vec<u8> {
    move |x| {
        let r = make(x);
        let bytes = r.encode_to_vec();
        *slot = Some(r);
        bytes
    }
}

/// The answer of a command: the response built by this call, or else the one its stored
/// record keeps (`None` for a record from before responses were stored: rebuild it).
fn answered<R: prost::Message + Default>(
    built: Option<R>,
    done: &Done,
) -> Result<Option<R>, Status> {
    match built {
        Some(r) => Ok(Some(r)),
        None => done.first(),
    }
}

/// The gRPC service.
#[derive(Clone)]
pub struct ConsultationGrpc {
    p: Platform,
    svc: Consultations,
    feed: Feed,
    proxies: Resolver,
}

impl ConsultationGrpc {
    /// The answer of SendMessage or Reply: the response built by this call or stored with its
    /// key, or, for a record stored before responses were kept, rebuilt from its ids as the
    /// thread is now (`practice`: as the practice sees it).
    async fn message_answer(
        &self,
        built: Option<pb::SendMessageResponse>,
        done: &Done,
        practice: bool,
    ) -> Result<pb::SendMessageResponse, Status> {
        if let Some(resp) = answered(built, done)? {
            return Ok(resp);
        }
        Ok(pb::SendMessageResponse {
            message: Some(
                self.message_view(done.message_id.as_deref().unwrap_or_default())
                    .await?,
            ),
            thread: Some(self.thread_view(&done.thread_id, practice).await?),
        })
    }

    /// The service over the shared platform.
    pub fn new(p: Platform) -> Self {
        Self::with_feed_capacity(p, crate::feed::DEFAULT_CAPACITY)
    }

    /// The service, with streams that catch up from the database after falling more than
    /// `capacity` batches behind the feed.
    pub fn with_feed_capacity(p: Platform, capacity: usize) -> Self {
        let feed = Feed::start(
            p.db.clone(),
            p.sequenced.clone(),
            p.shutdown.clone(),
            capacity,
        );
        Self {
            svc: Consultations::new(p.clone(), crate::Quotas::default()),
            proxies: p.proxies(),
            p,
            feed,
        }
    }

    /// The service with these per-patient quotas.
    pub fn with_quotas(mut self, quotas: crate::Quotas) -> Self {
        self.svc = self.svc.with_quotas(quotas);
        self
    }

    /// The process's event feed of the change streams.
    pub fn feed(&self) -> &Feed {
        &self.feed
    }

    /// The tonic server.
    pub fn into_server(self) -> pb::consultation_service_server::ConsultationServiceServer<Self> {
        pb::consultation_service_server::ConsultationServiceServer::new(self)
    }

    fn now(&self) -> i64 {
        self.p.clock.now_ms()
    }

    /// Who looks: the patient the call is about (resolving `x-on-behalf-of`, which may limit
    /// a parent's view) or the caller's practice.
    async fn viewer(&self, caller: &mut Caller, scope: &str) -> Result<Viewer, Status> {
        match caller.role {
            Role::Patient => {
                let nin = self.proxies.subject(caller, Area::Consultation).await?;
                Ok(Viewer::patient(caller, &nin))
            }
            _ => Ok(Viewer::Practice(caller.org_with_scope(scope)?.to_owned())),
        }
    }

    async fn thread_view(&self, id: &str, practice: bool) -> Result<pb::Thread, Status> {
        let t = self.svc.stored_thread(id).await?;
        Ok(convert::thread(&t, self.now(), practice))
    }

    async fn message_view(&self, id: &str) -> Result<pb::Message, Status> {
        Ok(convert::message(&self.svc.stored_message(id).await?))
    }
}

/// The offset a page token stands for.
fn offset(token: &str) -> Result<i64, ConsultationError> {
    if token.is_empty() {
        return Ok(0);
    }
    token
        .parse::<i64>()
        .ok()
        .filter(|o| *o >= 0)
        .ok_or_else(|| {
            ConsultationError::Invalid("page_token is not a token this service issued".into())
        })
}

/// Refuses a NUL in the attachments' names and types (see [`no_nul`]).
fn attachments_no_nul(attachments: &[pb::NewAttachment]) -> Result<(), Status> {
    for (i, a) in attachments.iter().enumerate() {
        no_nul(&a.file_name, &format!("attachments[{i}].file_name"))?;
        no_nul(&a.content_type, &format!("attachments[{i}].content_type"))?;
    }
    Ok(())
}

/// The token of the page after the one at `off` of `limit`, "" when there is none.
/// StartConsultation's `booking_request_id`: empty, or an id as the booking service makes them.
fn booking_request_field(v: &str) -> Result<String, Status> {
    if !v.is_empty()
        && (v.len() > 64
            || !v
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)))
    {
        return Err(Status::invalid_argument(
            "booking_request_id must be up to 64 characters of letters, digits, '-', '_' or '.'",
        ));
    }
    Ok(v.to_owned())
}

fn next_token(more: bool, off: i64, limit: i64) -> String {
    if more {
        (off + limit).to_string()
    } else {
        String::new()
    }
}

#[tonic::async_trait]
impl pb::consultation_service_server::ConsultationService for ConsultationGrpc {
    async fn start_consultation(
        &self,
        req: Request<pb::StartConsultationRequest>,
    ) -> Result<Response<pb::StartConsultationResponse>, Status> {
        let mut caller = Caller::from_request(&req)?.clone();
        let nin = self
            .proxies
            .subject(&mut caller, Area::Consultation)
            .await?;
        let r = req.into_inner();
        no_nuls(&[
            (&r.subject, "subject"),
            (&r.body, "body"),
            (&r.language, "language"),
        ])?;
        attachments_no_nul(&r.attachments)?;
        if r.urgent {
            let answer = self
                .svc
                .urgent_answer(&nin, Language::from_tag(&r.language))
                .await?;
            return Err(Status::failed_precondition(answer));
        }
        let new = NewThread {
            category: convert::category(r.category)?,
            subject: r.subject,
            body: r.body,
            attachments: convert::new_attachments(r.attachments),
            booking_request_id: booking_request_field(&r.booking_request_id)?,
        };
        let mut built = None;
        let encode = keeping(&mut built, |p: &crate::service::Posted| {
            pb::StartConsultationResponse {
                thread: Some(convert::thread(&p.thread, self.now(), false)),
                message: Some(convert::message(&p.message)),
            }
        });
        let done = self
            .svc
            .start(&caller, &nin, &r.idempotency_key, new, encode)
            .await?;
        econsult_runtime::telemetry::record_id("thread_id", &done.thread_id);
        if let Some(resp) = answered(built, &done)? {
            return Ok(Response::new(resp));
        }
        Ok(Response::new(pb::StartConsultationResponse {
            thread: Some(self.thread_view(&done.thread_id, false).await?),
            message: Some(
                self.message_view(done.message_id.as_deref().unwrap_or_default())
                    .await?,
            ),
        }))
    }

    async fn send_message(
        &self,
        req: Request<pb::SendMessageRequest>,
    ) -> Result<Response<pb::SendMessageResponse>, Status> {
        let mut caller = Caller::from_request(&req)?.clone();
        let nin = self
            .proxies
            .subject(&mut caller, Area::Consultation)
            .await?;
        let r = req.into_inner();
        no_nuls(&[(&r.thread_id, "thread_id"), (&r.body, "body")])?;
        attachments_no_nul(&r.attachments)?;
        let mut built = None;
        let encode = keeping(&mut built, |p: &crate::service::Posted| {
            pb::SendMessageResponse {
                message: Some(convert::message(&p.message)),
                thread: Some(convert::thread(&p.thread, self.now(), false)),
            }
        });
        let done = self
            .svc
            .send_message(
                &caller,
                &nin,
                &r.idempotency_key,
                &r.thread_id,
                &r.body,
                convert::new_attachments(r.attachments),
                encode,
            )
            .await?;
        Ok(Response::new(
            self.message_answer(built, &done, false).await?,
        ))
    }

    async fn list_threads(
        &self,
        req: Request<pb::ListThreadsRequest>,
    ) -> Result<Response<pb::ListThreadsResponse>, Status> {
        let mut caller = Caller::from_request(&req)?.clone();
        let nin = self
            .proxies
            .subject(&mut caller, Area::Consultation)
            .await?;
        let r = req.into_inner();
        let limit = page(r.page_size, 20, 100, "page_size")?;
        let off = offset(&r.page_token)?;
        let (threads, more) = self.svc.patient_threads(&caller, &nin, limit, off).await?;
        let now = self.now();
        Ok(Response::new(pb::ListThreadsResponse {
            threads: threads
                .iter()
                .map(|t| convert::thread(t, now, false))
                .collect(),
            next_page_token: next_token(more, off, limit),
        }))
    }

    async fn get_thread(
        &self,
        req: Request<pb::GetThreadRequest>,
    ) -> Result<Response<pb::GetThreadResponse>, Status> {
        let mut caller = Caller::from_request(&req)?.clone();
        let viewer = self.viewer(&mut caller, SCOPE_READ).await?;
        let r = req.into_inner();
        no_nul(&r.thread_id, "thread_id")?;
        let page = self
            .svc
            .thread_page(&caller, &viewer, &r.thread_id, r.after_seq, r.page_size)
            .await?;
        Ok(Response::new(pb::GetThreadResponse {
            thread: Some(convert::thread(
                &page.thread,
                self.now(),
                viewer.is_practice(),
            )),
            messages: page.messages.iter().map(convert::message).collect(),
            has_more: page.has_more,
        }))
    }

    async fn get_attachment(
        &self,
        req: Request<pb::GetAttachmentRequest>,
    ) -> Result<Response<pb::GetAttachmentResponse>, Status> {
        let mut caller = Caller::from_request(&req)?.clone();
        let viewer = self.viewer(&mut caller, SCOPE_READ).await?;
        let id = req.into_inner().attachment_id;
        no_nul(&id, "attachment_id")?;
        let (meta, content) = self.svc.attachment(&caller, &viewer, &id).await?;
        Ok(Response::new(pb::GetAttachmentResponse {
            attachment: Some(convert::attachment(&meta)),
            content,
        }))
    }

    async fn mark_read(
        &self,
        req: Request<pb::MarkReadRequest>,
    ) -> Result<Response<pb::MarkReadResponse>, Status> {
        let mut caller = Caller::from_request(&req)?.clone();
        let viewer = self.viewer(&mut caller, SCOPE_READ).await?;
        let r = req.into_inner();
        no_nul(&r.thread_id, "thread_id")?;
        let t = self
            .svc
            .mark_read(&caller, &viewer, &r.thread_id, r.up_to_seq)
            .await?;
        Ok(Response::new(pb::MarkReadResponse {
            thread: Some(convert::thread(&t, self.now(), viewer.is_practice())),
        }))
    }

    async fn withdraw_consultation(
        &self,
        req: Request<pb::WithdrawConsultationRequest>,
    ) -> Result<Response<pb::WithdrawConsultationResponse>, Status> {
        let mut caller = Caller::from_request(&req)?.clone();
        let nin = self
            .proxies
            .subject(&mut caller, Area::Consultation)
            .await?;
        let r = req.into_inner();
        no_nul(&r.thread_id, "thread_id")?;
        let mut built = None;
        let encode = keeping(&mut built, |t| pb::WithdrawConsultationResponse {
            thread: Some(convert::thread(t, self.now(), false)),
        });
        let done = self
            .svc
            .withdraw(&caller, &nin, &r.idempotency_key, &r.thread_id, encode)
            .await?;
        if let Some(resp) = answered(built, &done)? {
            return Ok(Response::new(resp));
        }
        Ok(Response::new(pb::WithdrawConsultationResponse {
            thread: Some(self.thread_view(&done.thread_id, false).await?),
        }))
    }

    type SubscribeStream = ChangeStream;

    async fn subscribe(
        &self,
        req: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let mut caller = Caller::from_request(&req)?.clone();
        let nin = self
            .proxies
            .subject(&mut caller, Area::Consultation)
            .await?;
        if caller.proxy.acting.as_ref().is_some_and(|a| a.limited) {
            return Err(Status::permission_denied(
                econsult_runtime::proxy::rule::LIMITED_STREAM,
            ));
        }
        let cursor = req.into_inner().after_cursor;
        // Events are routed by the patient's pseudonymous key, computed per call.
        let route = self.p.pseudonyms.key_for(nin.as_str());
        Ok(Response::new(self.change_stream(
            caller,
            None,
            Some(route),
            cursor,
        )))
    }

    async fn list_inbox(
        &self,
        req: Request<pb::ListInboxRequest>,
    ) -> Result<Response<pb::ListInboxResponse>, Status> {
        let caller = Caller::from_request(&req)?.clone();
        let org = caller.org_with_scope(SCOPE_READ)?.to_owned();
        let r = req.into_inner();
        no_nul(&r.gp_id, "gp_id")?;
        let limit = page(r.page_size, 50, 200, "page_size")?;
        let off = offset(&r.page_token)?;
        let inbox = self
            .svc
            .inbox(&caller, &org, &r.gp_id, r.include_done, limit, off)
            .await?;
        Ok(Response::new(pb::ListInboxResponse {
            threads: inbox
                .threads
                .iter()
                .map(|t| convert::thread(t, inbox.now_ms, true))
                .collect(),
            next_page_token: next_token(inbox.more, off, limit),
            overdue_count: inbox.overdue,
        }))
    }

    async fn claim_thread(
        &self,
        req: Request<pb::ClaimThreadRequest>,
    ) -> Result<Response<pb::ClaimThreadResponse>, Status> {
        let caller = Caller::from_request(&req)?.clone();
        let org = caller.org_with_scope(SCOPE_WRITE)?.to_owned();
        let r = req.into_inner();
        no_nuls(&[
            (&r.thread_id, "thread_id"),
            (&r.clinician_hpr_number, "clinician_hpr_number"),
        ])?;
        let mut built = None;
        let encode = keeping(&mut built, |t| pb::ClaimThreadResponse {
            thread: Some(convert::thread(t, self.now(), true)),
        });
        let done = self
            .svc
            .claim(
                &caller,
                &org,
                &r.idempotency_key,
                &r.thread_id,
                &r.clinician_hpr_number,
                encode,
            )
            .await?;
        if let Some(resp) = answered(built, &done)? {
            return Ok(Response::new(resp));
        }
        Ok(Response::new(pb::ClaimThreadResponse {
            thread: Some(self.thread_view(&done.thread_id, true).await?),
        }))
    }

    async fn set_thread_confidential(
        &self,
        req: Request<pb::SetThreadConfidentialRequest>,
    ) -> Result<Response<pb::SetThreadConfidentialResponse>, Status> {
        let caller = Caller::from_request(&req)?.clone();
        let org = caller.org_with_scope(SCOPE_WRITE)?.to_owned();
        let r = req.into_inner();
        no_nuls(&[(&r.thread_id, "thread_id")])?;
        let mut built = None;
        let encode = keeping(&mut built, |t| pb::SetThreadConfidentialResponse {
            thread: Some(convert::thread(t, self.now(), true)),
        });
        let done = self
            .svc
            .set_confidential(
                &caller,
                &org,
                &r.idempotency_key,
                &r.thread_id,
                r.confidential_to_patient,
                encode,
            )
            .await?;
        if let Some(resp) = answered(built, &done)? {
            return Ok(Response::new(resp));
        }
        Ok(Response::new(pb::SetThreadConfidentialResponse {
            thread: Some(self.thread_view(&done.thread_id, true).await?),
        }))
    }

    async fn reply(
        &self,
        req: Request<pb::ReplyRequest>,
    ) -> Result<Response<pb::SendMessageResponse>, Status> {
        let caller = Caller::from_request(&req)?.clone();
        let org = caller.org_with_scope(SCOPE_WRITE)?.to_owned();
        let r = req.into_inner();
        no_nuls(&[
            (&r.thread_id, "thread_id"),
            (&r.clinician_hpr_number, "clinician_hpr_number"),
            (&r.body, "body"),
        ])?;
        attachments_no_nul(&r.attachments)?;
        let reply = NewReply {
            clinician_hpr: r.clinician_hpr_number,
            body: r.body,
            ask_patient: r.ask_patient,
            attachments: convert::new_attachments(r.attachments),
        };
        let mut built = None;
        let encode = keeping(&mut built, |p: &crate::service::Posted| {
            pb::SendMessageResponse {
                message: Some(convert::message(&p.message)),
                thread: Some(convert::thread(&p.thread, self.now(), true)),
            }
        });
        let done = self
            .svc
            .reply(
                &caller,
                &org,
                &r.idempotency_key,
                &r.thread_id,
                reply,
                encode,
            )
            .await?;
        Ok(Response::new(
            self.message_answer(built, &done, true).await?,
        ))
    }

    async fn convert_to_booking(
        &self,
        req: Request<pb::ConvertToBookingRequest>,
    ) -> Result<Response<pb::ConvertToBookingResponse>, Status> {
        let caller = Caller::from_request(&req)?.clone();
        let org = caller.org_with_scope(SCOPE_WRITE)?.to_owned();
        let r = req.into_inner();
        no_nuls(&[(&r.thread_id, "thread_id"), (&r.body, "body")])?;
        let mut built = None;
        let encode = keeping(&mut built, |c: &crate::service::practice::Converted| {
            pb::ConvertToBookingResponse {
                thread: Some(convert::thread(&c.thread, self.now(), true)),
                message: Some(convert::message(&c.message)),
                offered_slots: c.offered.iter().map(convert::free_slot).collect(),
                request_id: c.request_id.clone(),
            }
        });
        let done = self
            .svc
            .convert(
                &caller,
                &org,
                &r.idempotency_key,
                &r.thread_id,
                &r.body,
                r.offer_count,
                encode,
            )
            .await?;
        if let Some(resp) = answered(built, &done)? {
            return Ok(Response::new(resp));
        }
        Ok(Response::new(pb::ConvertToBookingResponse {
            thread: Some(self.thread_view(&done.thread_id, true).await?),
            message: Some(
                self.message_view(done.message_id.as_deref().unwrap_or_default())
                    .await?,
            ),
            offered_slots: convert::offered(&done.offered),
            request_id: done.request_id,
        }))
    }

    async fn close_consultation(
        &self,
        req: Request<pb::CloseConsultationRequest>,
    ) -> Result<Response<pb::CloseConsultationResponse>, Status> {
        let caller = Caller::from_request(&req)?.clone();
        let org = caller.org_with_scope(SCOPE_WRITE)?.to_owned();
        let r = req.into_inner();
        no_nuls(&[
            (&r.thread_id, "thread_id"),
            (&r.outcome, "outcome"),
            (&r.tariff_code, "tariff_code"),
        ])?;
        let closing = Closing {
            outcome: r.outcome,
            tariff_code: r.tariff_code,
        };
        let mut built = None;
        let encode = keeping(&mut built, |t| pb::CloseConsultationResponse {
            thread: Some(convert::thread(t, self.now(), true)),
        });
        let done = self
            .svc
            .close(
                &caller,
                &org,
                &r.idempotency_key,
                &r.thread_id,
                closing,
                encode,
            )
            .await?;
        if let Some(resp) = answered(built, &done)? {
            return Ok(Response::new(resp));
        }
        Ok(Response::new(pb::CloseConsultationResponse {
            thread: Some(self.thread_view(&done.thread_id, true).await?),
        }))
    }

    type WatchInboxStream = ChangeStream;

    async fn watch_inbox(
        &self,
        req: Request<pb::WatchInboxRequest>,
    ) -> Result<Response<Self::WatchInboxStream>, Status> {
        let caller = Caller::from_request(&req)?.clone();
        let org = caller.org_with_scope(SCOPE_READ)?.to_owned();
        let cursor = req.into_inner().after_cursor;
        Ok(Response::new(self.change_stream(
            caller,
            Some(org),
            None,
            cursor,
        )))
    }

    async fn set_response_days(
        &self,
        req: Request<pb::SetResponseDaysRequest>,
    ) -> Result<Response<pb::SetResponseDaysResponse>, Status> {
        let caller = Caller::from_request(&req)?.clone();
        let org = caller.org_with_scope(SCOPE_WRITE)?.to_owned();
        let days = req.into_inner().working_days;
        let working_days = self.svc.set_response_days(&org, days).await?;
        Ok(Response::new(pb::SetResponseDaysResponse { working_days }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_stored_before_responses_were_kept_still_replays_from_its_ids() {
        let old: Done =
            serde_json::from_str(r#"{"thread_id":"t-1","message_id":"m-1","offered":[]}"#)
                .expect("an old record parses");
        assert_eq!(old.message_id.as_deref(), Some("m-1"));
        let first: Option<pb::SendMessageResponse> = old.first().expect("no stored response");
        assert!(first.is_none(), "rebuilt from the ids, as before");
    }

    #[test]
    fn a_stored_response_replays_exactly() {
        let resp = pb::ClaimThreadResponse {
            thread: Some(pb::Thread {
                thread_id: "t-1".into(),
                subject: "Rash".into(),
                message_count: 3,
                ..Default::default()
            }),
        };
        let stored =
            serde_json::to_string(&Done::thread_id_only("t-1").answering(&resp)).expect("encode");
        let back: Done = serde_json::from_str(&stored).expect("decode");
        assert_eq!(
            back.first::<pb::ClaimThreadResponse>().expect("decode"),
            Some(resp)
        );
    }

    impl Done {
        fn thread_id_only(id: &str) -> Self {
            Self {
                thread_id: id.into(),
                message_id: None,
                offered: Vec::new(),
                request_id: String::new(),
                response: String::new(),
            }
        }
    }
}
