//! Content rules for messages: sanitising text and checking attachments.

use crate::error::ConsultationError;
use sha2::Digest as _;

/// Most characters in a message body (after sanitising).
pub const MAX_BODY_CHARS: usize = 5000;
/// Most characters in a subject line.
pub const MAX_SUBJECT_CHARS: usize = 200;
/// Largest attachment.
pub const MAX_ATTACHMENT_BYTES: usize = 5 * 1024 * 1024;
/// Most attachments per message.
pub const MAX_ATTACHMENTS: usize = 3;

/// Removes control characters (keeping newline and tab) and escapes `&`, `<`, `>`, so that no
/// markup survives; trims surrounding whitespace. Counting happens on the result.
pub fn sanitize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.trim().chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\n' | '\t' => out.push(c),
            '\r' => {}
            c if c.is_control() => {}
            // Bidirectional overrides and zero-width characters that hide or reorder text.
            '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200B}' | '\u{FEFF}' => {}
            c => out.push(c),
        }
    }
    out
}

/// A sanitised, non-empty text of at most `max` characters; `INVALID_ARGUMENT` naming `field`
/// and the limit otherwise.
pub fn checked_text(text: &str, field: &str, max: usize) -> Result<String, ConsultationError> {
    let clean = sanitize(text);
    if clean.is_empty() {
        return Err(ConsultationError::Invalid(format!(
            "{field} must not be empty"
        )));
    }
    let n = clean.chars().count();
    if n > max {
        return Err(ConsultationError::Invalid(format!(
            "{field} is {n} characters; the limit is {max} characters"
        )));
    }
    Ok(clean)
}

/// An attachment as the sender gave it, before [`check_attachments`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewAttachment {
    /// The file name as given.
    pub file_name: String,
    /// The declared content type.
    pub content_type: String,
    /// The bytes.
    pub content: Vec<u8>,
}

/// A checked attachment.
#[derive(Debug, Clone)]
pub struct CheckedAttachment {
    /// File name.
    pub file_name: String,
    /// Content type matching the magic bytes.
    pub content_type: &'static str,
    /// The bytes.
    pub content: Vec<u8>,
    /// Hex SHA-256.
    pub sha256: String,
}

/// The content type the bytes really are, by magic bytes.
pub fn sniff(content: &[u8]) -> Option<&'static str> {
    if content.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some("image/png")
    } else if content.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some("image/jpeg")
    } else if content.starts_with(b"%PDF-") {
        Some("application/pdf")
    } else {
        None
    }
}

/// Checks the attachments of a message: count, size, name, and type by magic bytes.
pub fn check_attachments(
    list: Vec<NewAttachment>,
) -> Result<Vec<CheckedAttachment>, ConsultationError> {
    if list.len() > MAX_ATTACHMENTS {
        return Err(ConsultationError::Invalid(format!(
            "attachments: {} given; the limit is {MAX_ATTACHMENTS} per message",
            list.len()
        )));
    }
    list.into_iter()
        .enumerate()
        .map(|(i, a)| {
            let field = format!("attachments[{i}]");
            if a.content.is_empty() {
                return Err(ConsultationError::Invalid(format!("{field}.content is empty")));
            }
            if a.content.len() > MAX_ATTACHMENT_BYTES {
                return Err(ConsultationError::Invalid(format!(
                    "{field}.content is {} bytes; the limit is {MAX_ATTACHMENT_BYTES} bytes (5 MiB)",
                    a.content.len()
                )));
            }
            let name = sanitize(&a.file_name);
            if name.is_empty()
                || name.chars().count() > 200
                || name.contains(['/', '\\'])
                || name.starts_with('.')
            {
                return Err(ConsultationError::Invalid(format!(
                    "{field}.file_name must be 1-200 characters without path separators"
                )));
            }
            let real = sniff(&a.content).ok_or_else(|| {
                ConsultationError::Invalid(format!(
                    "{field}.content is not a PNG, JPEG or PDF file (checked by its first bytes)"
                ))
            })?;
            if a.content_type != real {
                return Err(ConsultationError::Invalid(format!(
                    "{field}.content_type is {:?} but the content is {real}",
                    a.content_type
                )));
            }
            crate::structure::check(real, &a.content)
                .map_err(|why| ConsultationError::Invalid(format!("{field}.content {why}")))?;
            let sha256 = hex(&sha2::Sha256::digest(&a.content));
            Ok(CheckedAttachment {
                file_name: name,
                content_type: real,
                content: a.content,
                sha256,
            })
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_is_escaped_and_controls_removed() {
        assert_eq!(
            sanitize(" <script>alert('x')</script>\u{7}\u{202E}ok &\r\n "),
            "&lt;script&gt;alert('x')&lt;/script&gt;ok &amp;"
        );
        assert_eq!(sanitize("a\nb\tc"), "a\nb\tc");
    }

    #[test]
    fn text_limits_name_the_field() {
        let e = tonic::Status::from(checked_text(" \u{0} ", "body", 10).unwrap_err());
        assert!(e.message().contains("body must not be empty"));
        let e = tonic::Status::from(checked_text(&"x".repeat(11), "body", 10).unwrap_err());
        assert!(e.message().contains("limit is 10"), "{}", e.message());
        // Escaping counts: 3 '<' become 12 characters.
        assert!(checked_text("<<<", "body", 11).is_err());
    }

    #[test]
    fn magic_bytes_decide_the_type() {
        assert_eq!(sniff(b"\x89PNG\r\n\x1a\nrest"), Some("image/png"));
        assert_eq!(sniff(&[0xFF, 0xD8, 0xFF, 0xE0]), Some("image/jpeg"));
        assert_eq!(sniff(b"%PDF-1.7"), Some("application/pdf"));
        assert_eq!(sniff(b"<html>"), None);
        let mismatch = NewAttachment {
            file_name: "x.png".into(),
            content_type: "image/png".into(),
            content: b"%PDF-1.4".to_vec(),
        };
        assert!(check_attachments(vec![mismatch]).is_err());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

        /// Whatever comes in, no markup or control character survives, and every `&` starts
        /// one of the three entities the sanitiser writes.
        #[test]
        fn sanitised_text_has_no_markup(s in "\\PC{0,300}|[<>&\\x00-\\x1f\\u{202e}a-z ]{0,100}") {
            let out = sanitize(&s);
            proptest::prop_assert!(!out.contains(['<', '>']));
            proptest::prop_assert!(out.chars().all(|c| !c.is_control() || c == '\n' || c == '\t'));
            for (i, _) in out.match_indices('&') {
                let rest = &out[i..];
                proptest::prop_assert!(rest.starts_with("&amp;") || rest.starts_with("&lt;") || rest.starts_with("&gt;"));
            }
        }

        /// Arbitrary bytes: refused unless they really start like a PNG, JPEG or PDF.
        #[test]
        fn attachments_are_typed_by_content(content in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64), declared in "(image/png|image/jpeg|application/pdf|text/html|)") {
            let a = NewAttachment {
                file_name: "f".into(),
                content_type: declared.clone(),
                content: content.clone(),
            };
            match check_attachments(vec![a]) {
                Ok(v) => {
                    proptest::prop_assert_eq!(Some(v[0].content_type), sniff(&content));
                    proptest::prop_assert_eq!(declared.as_str(), v[0].content_type, "the declared type is required and must match");
                }
                Err(e) => proptest::prop_assert_eq!(tonic::Status::from(e).code(), tonic::Code::InvalidArgument),
            }
        }
    }
}
