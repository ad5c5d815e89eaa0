//! Validation of what is relayed: session descriptions are parsed with the webrtc-rs SDP parser
//! (`rtc-sdp`, re-exported by webrtc-rs as `rtc::sdp`), ICE candidates are checked against the
//! candidate-attribute grammar (RFC 8839 §5.1). Nothing that fails is relayed.

use crate::error::SignallingError;
use rtc_sdp::SessionDescription;
use std::io::Cursor;

/// Parses `sdp` and checks it is a WebRTC description: at least one media section, ICE
/// credentials and a DTLS fingerprint (session level or in every media section).
pub fn validate_description(sdp: &str) -> Result<(), SignallingError> {
    if sdp.trim().is_empty() {
        return Err(SignallingError::Invalid(
            "description.sdp is required".into(),
        ));
    }
    let desc = SessionDescription::unmarshal(&mut Cursor::new(sdp.as_bytes()))
        .map_err(|e| SignallingError::Invalid(format!("description.sdp is malformed: {e}")))?;
    if desc.media_descriptions.is_empty() {
        return Err(SignallingError::Invalid(
            "description.sdp has no media section (m=)".into(),
        ));
    }
    for key in ["ice-ufrag", "ice-pwd", "fingerprint"] {
        let session_level = desc.attribute(key).is_some();
        let every_media = desc
            .media_descriptions
            .iter()
            .all(|m| m.attribute(key).flatten().is_some());
        if !session_level && !every_media {
            return Err(SignallingError::Invalid(format!(
                "description.sdp lacks a={key}"
            )));
        }
    }
    Ok(())
}

/// Checks an ICE candidate attribute: `candidate:<foundation> <component> <transport>
/// <priority> <address> <port> typ <type> …` (an `a=` prefix is accepted).
pub fn validate_candidate(candidate: &str) -> Result<(), SignallingError> {
    let bad = |why: &str| SignallingError::Invalid(format!("candidate.candidate {why}"));
    let c = candidate.trim();
    let c = c.strip_prefix("a=").unwrap_or(c);
    let rest = c
        .strip_prefix("candidate:")
        .ok_or_else(|| bad("must start with \"candidate:\""))?;
    let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
    if fields.len() < 8 {
        return Err(bad("has too few fields"));
    }
    let foundation = fields[0];
    if foundation.is_empty() || foundation.len() > 32 {
        return Err(bad("has an invalid foundation"));
    }
    fields[1]
        .parse::<u16>()
        .ok()
        .filter(|c| (1..=256).contains(c))
        .ok_or_else(|| bad("has an invalid component id"))?;
    if !matches!(fields[2].to_ascii_lowercase().as_str(), "udp" | "tcp") {
        return Err(bad("has an unknown transport (udp or tcp)"));
    }
    fields[3]
        .parse::<u32>()
        .map_err(|_| bad("has an invalid priority"))?;
    let address = fields[4];
    if address.is_empty()
        || address.len() > 255
        || !address
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '.' | ':' | '-'))
    {
        return Err(bad("has an invalid address"));
    }
    fields[5]
        .parse::<u16>()
        .map_err(|_| bad("has an invalid port"))?;
    if fields[6] != "typ" {
        return Err(bad("lacks \"typ\""));
    }
    if !matches!(fields[7], "host" | "srflx" | "prflx" | "relay") {
        return Err(bad("has an unknown candidate type"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFER: &str = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
        a=fingerprint:sha-256 AB:CD\r\n\
        m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\n\
        a=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuv\r\na=mid:0\r\n";

    #[test]
    fn descriptions_are_parsed() {
        validate_description(OFFER).expect("valid");
        assert!(validate_description("").is_err());
        assert!(validate_description("hello world").is_err());
        let no_media = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n";
        assert!(validate_description(no_media).is_err());
        let no_ice = OFFER.replace("a=ice-ufrag:abcd\r\n", "");
        let e = tonic::Status::from(validate_description(&no_ice).unwrap_err());
        assert!(e.message().contains("a=ice-ufrag"), "{e:?}");
    }

    #[test]
    fn candidates_are_checked() {
        validate_candidate("candidate:1 1 udp 2130706431 127.0.0.1 50000 typ host").unwrap();
        validate_candidate("a=candidate:abc 1 UDP 1 x.local 9 typ host generation 0").unwrap();
        for bad in [
            "",
            "candidate:1 1 udp",
            "candidate:1 1 sctp 1 127.0.0.1 5 typ host",
            "candidate:1 1 udp x 127.0.0.1 5 typ host",
            "candidate:1 1 udp 1 127.0.0.1 70000 typ host",
            "candidate:1 1 udp 1 127.0.0.1 5 type host",
            "candidate:1 1 udp 1 127.0.0.1 5 typ foo",
            "candidate:1 1 udp 1 <script> 5 typ host",
        ] {
            assert!(validate_candidate(bad).is_err(), "{bad}");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

        /// Arbitrary text never panics the parser.
        #[test]
        fn arbitrary_descriptions_never_panic(s in "\\PC{0,400}") {
            let _ = validate_description(&s);
        }

        /// A valid offer with one line dropped, duplicated or cut short is either still a
        /// WebRTC description or refused with INVALID_ARGUMENT: never a panic, never another code.
        #[test]
        fn mutated_offers_are_accepted_or_refused_cleanly(line in 0usize..12, cut in 0usize..40, op in 0u8..3) {
            let mut lines: Vec<String> = OFFER.split("\r\n").map(str::to_owned).collect();
            let i = line % lines.len();
            match op {
                0 => { lines.remove(i); }
                1 => { let l = lines[i].clone(); lines.insert(i, l); }
                _ => { let l = &lines[i]; let n = cut.min(l.len()); lines[i] = l[..n].to_owned(); }
            }
            if let Err(e) = validate_description(&lines.join("\r\n")).map_err(tonic::Status::from) {
                proptest::prop_assert_eq!(e.code(), tonic::Code::InvalidArgument);
            }
        }

        /// Arbitrary candidate lines never panic; accepted ones start with "candidate:".
        #[test]
        fn arbitrary_candidates_never_panic(s in "(a=)?(candidate:)?\\PC{0,120}") {
            if validate_candidate(&s).is_ok() {
                let t = s.trim();
                proptest::prop_assert!(t.strip_prefix("a=").unwrap_or(t).starts_with("candidate:"));
            }
        }
    }
}
