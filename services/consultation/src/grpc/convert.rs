//! Proto ⇄ domain conversions of the consultation service.

use crate::content::NewAttachment;
use crate::domain::{Attachment, Category, ChangeKind, Message, Thread};
use crate::error::ConsultationError;
use econsult_booking::directory::FreeSlot;
use econsult_proto::consultation::v1 as pb;
use econsult_runtime::clock::from_ms;
use econsult_runtime::grpc::timestamp;

/// The protobuf view of `t` at `now_ms` (which decides `overdue`); the identity number only
/// for the practice.
pub fn thread(t: &Thread, now_ms: i64, for_practice: bool) -> pb::Thread {
    pb::Thread {
        thread_id: t.thread_id.clone(),
        patient_nin: if for_practice {
            t.patient_nin.clone()
        } else {
            String::new()
        },
        gp_id: t.gp_id.clone(),
        gp_display_name: t.gp_display_name.clone(),
        org_number: t.org_number.clone(),
        category: t.category.code() as i32,
        subject: t.subject.clone(),
        state: t.state.code() as i32,
        submitted_at: Some(timestamp(from_ms(t.submitted_at))),
        due_at: Some(timestamp(from_ms(t.due_at))),
        first_response_at: t.first_response_at.map(|t| timestamp(from_ms(t))),
        overdue: t.overdue(now_ms),
        assigned_hpr_number: t.assigned_hpr.clone(),
        message_count: t.last_seq,
        patient_read_seq: t.patient_read_seq,
        practice_read_seq: t.practice_read_seq,
        outcome: t.outcome.clone(),
        tariff_code: t.tariff_code.clone(),
        closed_at: t.closed_at.map(|t| timestamp(from_ms(t))),
        updated_at: Some(timestamp(from_ms(t.updated_at))),
        confidential_to_patient: t.confidential,
    }
}

/// The protobuf view of an attachment's metadata.
pub fn attachment(a: &Attachment) -> pb::Attachment {
    pb::Attachment {
        attachment_id: a.attachment_id.clone(),
        file_name: a.file_name.clone(),
        content_type: a.content_type.clone(),
        size_bytes: a.size_bytes,
        sha256: a.sha256.clone(),
    }
}

/// The protobuf view of a message.
pub fn message(m: &Message) -> pb::Message {
    pb::Message {
        message_id: m.message_id.clone(),
        thread_id: m.thread_id.clone(),
        seq: m.seq,
        author: m.author.code() as i32,
        author_hpr_number: m.author_hpr.clone(),
        body: m.body.clone(),
        attachments: m.attachments.iter().map(attachment).collect(),
        sent_at: Some(timestamp(from_ms(m.sent_at))),
    }
}

/// Offered slots as a stored record keeps them (id, start ms, end ms).
pub fn offered(slots: &[(String, i64, i64)]) -> Vec<pb::OfferedSlot> {
    slots
        .iter()
        .map(|(id, s, e)| pb::OfferedSlot {
            slot_id: id.clone(),
            start: Some(timestamp(from_ms(*s))),
            end: Some(timestamp(from_ms(*e))),
        })
        .collect()
}

/// A slot offered by a conversion.
pub fn free_slot(s: &FreeSlot) -> pb::OfferedSlot {
    pb::OfferedSlot {
        slot_id: s.slot_id.clone(),
        start: Some(timestamp(from_ms(s.start_ms))),
        end: Some(timestamp(from_ms(s.end_ms))),
    }
}

/// The attachments of a request.
pub fn new_attachments(list: Vec<pb::NewAttachment>) -> Vec<NewAttachment> {
    list.into_iter()
        .map(|a| NewAttachment {
            file_name: a.file_name,
            content_type: a.content_type,
            content: a.content,
        })
        .collect()
}

/// The category of a new thread; `INVALID_ARGUMENT` for none or an unknown number.
pub fn category(code: i32) -> Result<Category, ConsultationError> {
    match pb::Category::try_from(code) {
        Ok(c) if c != pb::Category::Unspecified => Category::from_code(i64::from(c as i32)),
        _ => None,
    }
    .ok_or_else(|| {
        ConsultationError::Invalid(
            "category must be E_CONSULTATION, PRESCRIPTION_RENEWAL or ADMINISTRATIVE".into(),
        )
    })
}

/// The proto's kind of a change.
pub fn change_kind(k: ChangeKind) -> pb::ChangeKind {
    match k {
        ChangeKind::Started => pb::ChangeKind::Started,
        ChangeKind::Message => pb::ChangeKind::Message,
        ChangeKind::State => pb::ChangeKind::State,
        ChangeKind::Read => pb::ChangeKind::Read,
    }
}
