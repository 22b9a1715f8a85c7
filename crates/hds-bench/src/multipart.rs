//! `multipart/related` bodies (PS3.18 8.6): building STOW-RS requests and
//! splitting WADO-RS responses.

use std::collections::VecDeque;

use bytes::Bytes;
use memchr::memmem;

/// A boundary no DICOM payload is likely to contain; a per-process random
/// suffix keeps it from matching any fixed pattern.
pub fn new_boundary() -> String {
    format!("hds-bench-{}", uuid::Uuid::new_v4().simple())
}

/// The Content-Type of a STOW-RS request whose parts are DICOM files.
pub fn stow_content_type(boundary: &str) -> String {
    format!("multipart/related; type=\"application/dicom\"; boundary={boundary}")
}

/// A `multipart/related` request body held as pieces: the files' own bytes (shared, not
/// copied) between small delimiter pieces. The client sends it without assembling it, so a STOW
/// costs the load generator no copy of its payload and no fresh memory to hold one; on the
/// 2 cores it shares with the server under test, that copy took CPU from the server.
#[derive(Debug)]
pub struct MultipartBody {
    pieces: VecDeque<Bytes>,
}

impl MultipartBody {
    /// The length in bytes of what is left to send: before sending, the Content-Length.
    pub fn len(&self) -> u64 {
        self.pieces.iter().map(|piece| piece.len() as u64).sum()
    }

    /// The body as one buffer.
    #[cfg(test)]
    pub fn to_bytes(&self) -> Bytes {
        self.pieces
            .iter()
            .flatten()
            .copied()
            .collect::<Vec<u8>>()
            .into()
    }
}

impl http_body::Body for MultipartBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _context: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        std::task::Poll::Ready(
            self.pieces
                .pop_front()
                .map(|piece| Ok(http_body::Frame::data(piece))),
        )
    }

    fn is_end_stream(&self) -> bool {
        self.pieces.is_empty()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.len())
    }
}

/// Builds a `multipart/related` body with one `application/dicom` part per file.
pub fn build_dicom_multipart<'a>(
    boundary: &str,
    files: impl IntoIterator<Item = &'a Bytes>,
) -> MultipartBody {
    let part_head = Bytes::from(format!(
        "--{boundary}\r\nContent-Type: application/dicom\r\n\r\n"
    ));
    let part_tail = Bytes::from_static(b"\r\n");
    let mut pieces = VecDeque::new();
    for file in files {
        pieces.push_back(part_head.clone());
        pieces.push_back(file.clone());
        pieces.push_back(part_tail.clone());
    }
    pieces.push_back(Bytes::from(format!("--{boundary}--\r\n")));
    MultipartBody { pieces }
}

/// Why a multipart body could not be split.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MultipartError {
    /// The Content-Type is not multipart or names no boundary.
    #[error("response is not multipart with a boundary")]
    NoBoundary,
    /// The body does not start with, or never closes, its boundary.
    #[error("malformed multipart body")]
    Malformed,
}

/// Extracts the `boundary` parameter of a multipart Content-Type.
pub fn boundary_from_content_type(content_type: &str) -> Result<String, MultipartError> {
    let mut parameters = content_type.split(';');
    let media_type = parameters.next().unwrap_or_default().trim();
    if !media_type.to_ascii_lowercase().starts_with("multipart/") {
        return Err(MultipartError::NoBoundary);
    }
    for parameter in parameters {
        if let Some((name, value)) = parameter.split_once('=')
            && name.trim().eq_ignore_ascii_case("boundary")
        {
            let value = value.trim().trim_matches('"');
            if value.is_empty() {
                return Err(MultipartError::NoBoundary);
            }
            return Ok(value.to_string());
        }
    }
    Err(MultipartError::NoBoundary)
}

/// Splits a multipart body into the payloads of its parts (headers dropped).
pub fn split_parts(body: &Bytes, boundary: &str) -> Result<Vec<Bytes>, MultipartError> {
    let delimiter = format!("--{boundary}");
    let delimiter_finder = memmem::Finder::new(delimiter.as_bytes());
    // Subsequent delimiters are preceded by CRLF, which belongs to them.
    let inner_delimiter = format!("\r\n--{boundary}");
    let inner_finder = memmem::Finder::new(inner_delimiter.as_bytes());

    let first = delimiter_finder
        .find(body)
        .ok_or(MultipartError::Malformed)?;
    let mut cursor = first + delimiter.len();
    let mut parts = Vec::new();
    loop {
        let rest = &body[cursor..];
        if rest.starts_with(b"--") {
            return Ok(parts);
        }
        // Skip transport padding and the CRLF that ends the delimiter line.
        let line_end = memmem::find(rest, b"\r\n").ok_or(MultipartError::Malformed)?;
        let part_start = cursor + line_end + 2;
        // A part with no headers starts with the blank line directly.
        let payload_start = if body[part_start..].starts_with(b"\r\n") {
            part_start + 2
        } else {
            let headers_length =
                memmem::find(&body[part_start..], b"\r\n\r\n").ok_or(MultipartError::Malformed)?;
            part_start + headers_length + 4
        };
        let payload_end = payload_start
            + inner_finder
                .find(&body[payload_start..])
                .ok_or(MultipartError::Malformed)?;
        parts.push(body.slice(payload_start..payload_end));
        cursor = payload_end + inner_delimiter.len();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boundary_is_read_quoted_or_bare_and_case_insensitively() {
        assert_eq!(
            boundary_from_content_type(
                "multipart/related; type=\"application/dicom\"; boundary=\"abc\""
            ),
            Ok("abc".to_string())
        );
        assert_eq!(
            boundary_from_content_type("Multipart/Related;Boundary=xyz;type=application/dicom"),
            Ok("xyz".to_string())
        );
        assert_eq!(
            boundary_from_content_type("application/dicom+json"),
            Err(MultipartError::NoBoundary)
        );
        assert_eq!(
            boundary_from_content_type("multipart/related; type=application/dicom"),
            Err(MultipartError::NoBoundary)
        );
    }

    #[test]
    fn built_bodies_split_back_into_the_same_payloads() {
        let payloads = [
            Bytes::from_static(b"first\r\n--not-the-boundary"),
            Bytes::from(vec![0u8; 1000]),
            Bytes::new(),
        ];
        let boundary = new_boundary();
        let body = build_dicom_multipart(&boundary, &payloads);
        let whole = body.to_bytes();
        assert_eq!(body.len(), whole.len() as u64);
        let parts = split_parts(&whole, &boundary).expect("splits");
        assert_eq!(parts, payloads.to_vec());
    }

    #[test]
    fn parts_with_several_headers_and_a_preamble_are_split() {
        let body = Bytes::from_static(
            b"preamble\r\n--b1\r\nContent-Type: application/dicom\r\nContent-Length: 3\r\n\r\nabc\r\n--b1\r\n\r\nxy\r\n--b1--\r\n",
        );
        let parts = split_parts(&body, "b1").expect("splits");
        assert_eq!(
            parts,
            vec![Bytes::from_static(b"abc"), Bytes::from_static(b"xy")]
        );
    }

    #[test]
    fn unterminated_bodies_are_rejected() {
        let body = Bytes::from_static(b"--b1\r\nContent-Type: application/dicom\r\n\r\nabc");
        assert_eq!(split_parts(&body, "b1"), Err(MultipartError::Malformed));
        assert_eq!(
            split_parts(&Bytes::from_static(b"nothing"), "b1"),
            Err(MultipartError::Malformed)
        );
    }
}
