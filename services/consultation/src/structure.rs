//! Is a file what its first bytes say? An attachment typed by its magic bytes alone may be
//! anything behind them (`%PDF-` followed by an HTML page was accepted). Each accepted type is
//! walked here as far as its framing goes, without decoding images or PDF objects:
//! - PNG: the signature, then chunks (length, type, data, CRC-32 checked), IHDR first, at
//!   least one IDAT, IEND last and nothing after it;
//! - JPEG: SOI, marker segments of the stated lengths, a frame header and a scan, EOI last and
//!   nothing after it;
//! - PDF: a `%PDF-d.d` header line, and `startxref` then `%%EOF` at the end (the trailer every
//!   reader starts from).

/// Why `content` is not a well-formed file of type `content_type` (one of the sniffed types),
/// or `Ok` when it is.
pub fn check(content_type: &str, content: &[u8]) -> Result<(), &'static str> {
    match content_type {
        "image/png" => png(content),
        "image/jpeg" => jpeg(content),
        "application/pdf" => pdf(content),
        _ => Err("is not a PNG, JPEG or PDF file"),
    }
}

fn be32(b: &[u8]) -> usize {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize
}

fn png(b: &[u8]) -> Result<(), &'static str> {
    const TRUNCATED: &str = "is not a whole PNG file (a chunk runs past its end)";
    let mut at = 8;
    let (mut first, mut idat) = (true, false);
    loop {
        let head = b.get(at..at + 8).ok_or(TRUNCATED)?;
        let len = be32(head);
        let kind = &head[4..8];
        if len > i32::MAX as usize || !kind.iter().all(u8::is_ascii_alphabetic) {
            return Err("is not a PNG file (a chunk header is not one)");
        }
        let end = (at + 8).checked_add(len).ok_or(TRUNCATED)?;
        let body = b.get(at + 4..end).ok_or(TRUNCATED)?;
        let crc = b.get(end..end + 4).ok_or(TRUNCATED)?;
        if crc32fast::hash(body) as usize != be32(crc) {
            return Err("is not a PNG file (a chunk's CRC does not match)");
        }
        if first && (kind != b"IHDR" || len != 13) {
            return Err("is not a PNG file (it does not start with an IHDR chunk)");
        }
        first = false;
        idat |= kind == b"IDAT";
        at = end + 4;
        if kind == b"IEND" {
            return match (idat, at == b.len()) {
                (false, _) => Err("is not a PNG file (it has no image data)"),
                (true, false) => Err("has bytes after the PNG image's end"),
                (true, true) => Ok(()),
            };
        }
    }
}

fn jpeg(b: &[u8]) -> Result<(), &'static str> {
    const TRUNCATED: &str = "is not a whole JPEG file (it ends inside a segment)";
    let mut at = 2;
    let (mut frame, mut scan) = (false, false);
    loop {
        if *b.get(at).ok_or(TRUNCATED)? != 0xFF {
            return Err("is not a JPEG file (a segment does not start with a marker)");
        }
        while b.get(at) == Some(&0xFF) {
            at += 1;
        }
        let marker = *b.get(at).ok_or(TRUNCATED)?;
        at += 1;
        match marker {
            0xD9 => {
                return match (frame && scan, at == b.len()) {
                    (false, _) => Err("is not a JPEG file (it has no frame or scan)"),
                    (true, false) => Err("has bytes after the JPEG image's end"),
                    (true, true) => Ok(()),
                };
            }
            0x01 | 0xD0..=0xD7 => continue,
            0x00 | 0xD8 => return Err("is not a JPEG file (a marker is out of place)"),
            _ => {}
        }
        let len = b
            .get(at..at + 2)
            .map(|l| u16::from_be_bytes([l[0], l[1]]) as usize)
            .ok_or(TRUNCATED)?;
        if len < 2 || at + len > b.len() {
            return Err(TRUNCATED);
        }
        at += len;
        frame |= matches!(marker, 0xC0..=0xCF) && !matches!(marker, 0xC4 | 0xC8 | 0xCC);
        if marker == 0xDA {
            if !frame {
                return Err("is not a JPEG file (a scan before its frame header)");
            }
            scan = true;
            // Entropy-coded data: up to the next marker that is not a stuffed 0xFF00 or a restart.
            loop {
                let ff = b[at..].iter().position(|&x| x == 0xFF).ok_or(TRUNCATED)?;
                at += ff;
                match b.get(at + 1) {
                    Some(0x00 | 0xD0..=0xD7 | 0xFF) => at += 1,
                    Some(_) => break,
                    None => return Err(TRUNCATED),
                }
            }
        }
    }
}

fn pdf(b: &[u8]) -> Result<(), &'static str> {
    let header = b.get(..9).ok_or("is not a PDF file (no header line)")?;
    if !(header.starts_with(b"%PDF-")
        && header[5].is_ascii_digit()
        && header[6] == b'.'
        && header[7].is_ascii_digit()
        && matches!(header[8], b'\r' | b'\n'))
    {
        return Err("is not a PDF file (its first line is not %PDF-d.d)");
    }
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(0, |i| i + 1);
    if !b[..end].ends_with(b"%%EOF") {
        return Err("is not a whole PDF file (it does not end with %%EOF)");
    }
    let tail = &b[end.saturating_sub(1024)..end];
    if !tail.windows(9).any(|w| w == b"startxref") {
        return Err("is not a whole PDF file (no startxref before %%EOF)");
    }
    Ok(())
}

/// Minimal well-formed files of each type, with `extra` filler bytes inside (tests).
pub mod samples {
    /// A PNG: IHDR (1×1), one IDAT chunk holding `extra` bytes, IEND.
    pub fn png(extra: usize) -> Vec<u8> {
        let mut v = b"\x89PNG\r\n\x1a\n".to_vec();
        let mut chunk = |kind: &[u8; 4], data: &[u8]| {
            v.extend((data.len() as u32).to_be_bytes());
            let mut body = kind.to_vec();
            body.extend_from_slice(data);
            v.extend_from_slice(&body);
            v.extend(crc32fast::hash(&body).to_be_bytes());
        };
        chunk(b"IHDR", &[0, 0, 0, 1, 0, 0, 0, 1, 8, 0, 0, 0, 0]);
        let filler: Vec<u8> = (0..extra).map(|i| (i * 7 % 251) as u8).collect();
        chunk(b"IDAT", &filler);
        chunk(b"IEND", &[]);
        v
    }

    /// A JPEG: SOI, a baseline frame header (1×1, one component), a scan with `extra` bytes of
    /// entropy-coded data (no 0xFF in them), EOI.
    pub fn jpeg(extra: usize) -> Vec<u8> {
        let mut v = vec![0xFF, 0xD8];
        v.extend([0xFF, 0xC0, 0, 11, 8, 0, 1, 0, 1, 1, 1, 0x11, 0]);
        v.extend([0xFF, 0xDA, 0, 8, 1, 1, 0, 0, 63, 0]);
        v.extend((0..extra.max(1)).map(|i| (i * 7 % 251) as u8));
        v.extend([0xFF, 0xD9]);
        v
    }

    /// A PDF: header, `extra` bytes of a comment body, startxref and %%EOF.
    pub fn pdf(extra: usize) -> Vec<u8> {
        let mut v = b"%PDF-1.7\n%".to_vec();
        v.extend((0..extra).map(|i| b'a' + (i % 26) as u8));
        v.extend_from_slice(b"\nstartxref\n0\n%%EOF\n");
        v
    }
}

#[cfg(test)]
mod tests {
    use super::samples;
    use super::*;

    #[test]
    fn well_formed_files_pass() {
        for extra in [0, 1, 5, 1000] {
            assert_eq!(check("image/png", &samples::png(extra)), Ok(()));
            assert_eq!(check("image/jpeg", &samples::jpeg(extra)), Ok(()));
            assert_eq!(check("application/pdf", &samples::pdf(extra)), Ok(()));
        }
    }

    #[test]
    fn a_type_prefix_before_a_web_page_is_refused() {
        let page = b"<html><script>alert(1)</script></html>";
        for (kind, prefix) in [
            ("image/png", b"\x89PNG\r\n\x1a\n".to_vec()),
            ("image/jpeg", vec![0xFF, 0xD8, 0xFF]),
            ("application/pdf", b"%PDF-".to_vec()),
            ("application/pdf", b"%PDF-1.7\n".to_vec()),
        ] {
            let mut v = prefix.clone();
            v.extend_from_slice(page);
            assert!(
                check(kind, &v).is_err(),
                "{kind} {:?}",
                String::from_utf8_lossy(&v)
            );
        }
    }

    #[test]
    fn bytes_after_the_end_and_broken_frames_are_refused() {
        let mut png = samples::png(10);
        png.extend_from_slice(b"<html>");
        assert_eq!(
            check("image/png", &png),
            Err("has bytes after the PNG image's end")
        );
        let mut png = samples::png(10);
        png[45] ^= 1; // inside the IDAT data: its CRC no longer matches
        assert!(check("image/png", &png).unwrap_err().contains("CRC"));
        let mut jpeg = samples::jpeg(10);
        jpeg.extend_from_slice(b"<html>");
        assert_eq!(
            check("image/jpeg", &jpeg),
            Err("has bytes after the JPEG image's end")
        );
        let jpeg = samples::jpeg(10);
        assert!(check("image/jpeg", &jpeg[..jpeg.len() - 2]).is_err());
        let pdf = samples::pdf(10);
        assert!(check("application/pdf", &pdf[..pdf.len() - 7]).is_err());
    }

    proptest::proptest! {
        /// Every strict prefix of a well-formed file is refused (nothing truncated passes).
        #[test]
        fn truncations_are_refused(extra in 0usize..300, cut in 0usize..1000) {
            for (kind, v) in [("image/png", samples::png(extra)), ("image/jpeg", samples::jpeg(extra)), ("application/pdf", samples::pdf(extra))] {
                let cut = cut % v.len();
                let short = &v[..cut];
                // A PDF cut after %%EOF only loses the final newline: still whole.
                if kind == "application/pdf" && short.ends_with(b"%%EOF") {
                    continue;
                }
                proptest::prop_assert!(check(kind, short).is_err(), "{kind} cut at {cut}");
            }
        }

        /// Arbitrary bytes never panic the walkers.
        #[test]
        fn arbitrary_bytes_do_not_panic(v in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
            for kind in ["image/png", "image/jpeg", "application/pdf"] {
                let _ = check(kind, &v);
            }
        }
    }
}
