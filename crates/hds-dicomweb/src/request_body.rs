//! What a request body may be: its size, how long it may stall, and, for a multipart body, the
//! length of its boundary, of each part's header and the number of its parts.
//!
//! The multipart checks run on the raw bytes before the multipart parser sees them, because the
//! parser buffers a part's header until its end (a header that never ends would be held whole)
//! and accepts any number of parts (each of which costs a blob). The scan is linear: each byte
//! is looked at once, plus a window of one delimiter's length at chunk edges.

use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use memchr::memmem;

/// The longest boundary RFC 2046 (5.1.1) allows.
pub const MAX_BOUNDARY_LEN: usize = 70;

/// Limits on a `multipart/related` request body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MultipartLimits {
    /// The most parts a request may hold.
    pub max_parts: usize,
    /// The most bytes of one part's header (from the end of its delimiter line to the blank
    /// line that ends the header).
    pub max_header_bytes: usize,
}

impl Default for MultipartLimits {
    fn default() -> Self {
        MultipartLimits {
            max_parts: 10_000,
            max_header_bytes: 16 * 1024,
        }
    }
}

/// Why a request body was cut off.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// More bytes than the request size limit.
    #[error("request body too large")]
    TooLarge,
    /// The client sent nothing for longer than the body idle timeout.
    #[error("the request body stalled")]
    Stalled,
    /// A part's header is longer than the limit.
    #[error("a part header exceeds {0} bytes")]
    PartHeaderTooLarge(usize),
    /// More parts than the limit.
    #[error("the request has more than {0} parts")]
    TooManyParts(usize),
    /// Reading the body failed.
    #[error("{0}")]
    Body(axum::Error),
}

/// Ends `stream` with an error once more than `limit` bytes have passed, or when no chunk
/// arrives for `idle_timeout`; with `multipart`, also when the body breaks its limits.
pub fn guard<S>(
    stream: S,
    limit: u64,
    idle_timeout: Duration,
    multipart: Option<(MultipartScanner, MultipartLimits)>,
) -> impl Stream<Item = Result<Bytes, BodyError>> + Send + Unpin + 'static
where
    S: Stream<Item = Result<Bytes, axum::Error>> + Send + Unpin + 'static,
{
    struct State<S> {
        stream: S,
        seen: u64,
        limit: u64,
        idle_timeout: Duration,
        multipart: Option<(MultipartScanner, MultipartLimits)>,
        failed: bool,
    }
    let state = State {
        stream,
        seen: 0,
        limit,
        idle_timeout,
        multipart,
        failed: false,
    };
    futures::stream::unfold(state, |mut state| async move {
        if state.failed {
            return None;
        }
        let next = match tokio::time::timeout(state.idle_timeout, state.stream.next()).await {
            Err(_) => Err(BodyError::Stalled),
            Ok(None) => return None,
            Ok(Some(Err(error))) => Err(BodyError::Body(error)),
            Ok(Some(Ok(chunk))) => {
                state.seen += chunk.len() as u64;
                if state.seen > state.limit {
                    Err(BodyError::TooLarge)
                } else if let Some((scanner, limits)) = &mut state.multipart {
                    scanner.scan(&chunk, limits).map(|()| chunk)
                } else {
                    Ok(chunk)
                }
            }
        };
        state.failed = next.is_err();
        Some((next, state))
    })
    .boxed()
}

/// Where a [`MultipartScanner`] is in the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ScanState {
    /// In the preamble or a part's content: looking for the next delimiter.
    Content,
    /// Just after a delimiter: `--` (this many of its dashes seen) closes the body.
    AfterDelimiter(usize),
    /// On the rest of a delimiter's line (transport padding, then its CRLF), this many bytes
    /// into the part's header, the line's `\r` seen or not.
    DelimiterLine { bytes: usize, cr: bool },
    /// In a part's header, this many bytes in, with this many bytes of `\r\n\r\n` matched.
    Header { bytes: usize, matched: usize },
    /// After the closing delimiter: the epilogue, ignored.
    Epilogue,
}

/// Follows the structure of a multipart body chunk by chunk: counts parts and measures their
/// headers. It does not parse; the multipart parser does, after it, so the scanner reads the
/// structure exactly as that parser does (multer 3), or a limit would hold for a reading the
/// parser does not make:
/// - the first delimiter is `--{boundary}` anywhere in the preamble (no line end before it);
///   later ones are `\r\n--{boundary}` in a part's content;
/// - after a delimiter, spaces and tabs and then the line's CRLF; the header is what follows,
///   up to the first `\r\n\r\n` after that CRLF (a part without header fields sends a bare
///   CRLF there).
#[derive(Debug, Clone)]
pub struct MultipartScanner {
    /// Finds `\r\n--{boundary}`, the delimiter in a part's content.
    delimiter: memmem::Finder<'static>,
    /// Finds `--{boundary}`, the first delimiter (in the preamble).
    first_delimiter: memmem::Finder<'static>,
    /// Whether the first delimiter has been seen.
    opened: bool,
    /// The last bytes of content seen, fewer than the delimiter's length: a delimiter may be
    /// split across chunks.
    carry: Vec<u8>,
    state: ScanState,
    parts: usize,
}

impl MultipartScanner {
    /// A scanner for a body whose boundary is `boundary`; `None` when the boundary is empty or
    /// longer than [`MAX_BOUNDARY_LEN`].
    pub fn new(boundary: &str) -> Option<MultipartScanner> {
        if boundary.is_empty() || boundary.len() > MAX_BOUNDARY_LEN {
            return None;
        }
        let mut delimiter = b"\r\n--".to_vec();
        delimiter.extend_from_slice(boundary.as_bytes());
        Some(MultipartScanner {
            first_delimiter: memmem::Finder::new(&delimiter[2..]).into_owned(),
            delimiter: memmem::Finder::new(&delimiter).into_owned(),
            opened: false,
            carry: Vec::new(),
            state: ScanState::Content,
            parts: 0,
        })
    }

    /// Follows one more chunk of the body.
    pub fn scan(&mut self, chunk: &[u8], limits: &MultipartLimits) -> Result<(), BodyError> {
        let mut at = 0;
        while at < chunk.len() {
            match self.state {
                ScanState::Epilogue => return Ok(()),
                ScanState::Content => match self.find_delimiter(&chunk[at..]) {
                    Some(end) => {
                        at += end;
                        self.opened = true;
                        self.carry.clear();
                        self.state = ScanState::AfterDelimiter(0);
                    }
                    None => return Ok(()),
                },
                ScanState::AfterDelimiter(dashes) => {
                    if chunk[at] == b'-' {
                        at += 1;
                        if dashes + 1 == 2 {
                            self.state = ScanState::Epilogue;
                        } else {
                            self.state = ScanState::AfterDelimiter(dashes + 1);
                        }
                    } else {
                        // A new part; its header starts here (padding and line end included).
                        self.parts += 1;
                        if self.parts > limits.max_parts {
                            return Err(BodyError::TooManyParts(limits.max_parts));
                        }
                        self.state = ScanState::DelimiterLine {
                            bytes: dashes,
                            cr: false,
                        };
                    }
                }
                ScanState::DelimiterLine { mut bytes, mut cr } => {
                    let mut header_starts = false;
                    while at < chunk.len() && !header_starts {
                        let byte = chunk[at];
                        at += 1;
                        bytes += 1;
                        if bytes > limits.max_header_bytes {
                            return Err(BodyError::PartHeaderTooLarge(limits.max_header_bytes));
                        }
                        match (cr, byte) {
                            (false, b' ' | b'\t') => {}
                            (false, b'\r') => cr = true,
                            // The parser refuses anything else here; counting it as header is
                            // only stricter.
                            _ => header_starts = true,
                        }
                    }
                    self.state = if header_starts {
                        ScanState::Header { bytes, matched: 0 }
                    } else {
                        ScanState::DelimiterLine { bytes, cr }
                    };
                }
                ScanState::Header {
                    mut bytes,
                    mut matched,
                } => {
                    const END: &[u8] = b"\r\n\r\n";
                    while at < chunk.len() {
                        let byte = chunk[at];
                        at += 1;
                        bytes += 1;
                        if bytes > limits.max_header_bytes {
                            return Err(BodyError::PartHeaderTooLarge(limits.max_header_bytes));
                        }
                        matched = if byte == END[matched] {
                            matched + 1
                        } else if byte == b'\r' {
                            1
                        } else {
                            0
                        };
                        if matched == END.len() {
                            break;
                        }
                    }
                    self.state = if matched == END.len() {
                        ScanState::Content
                    } else {
                        ScanState::Header { bytes, matched }
                    };
                }
            }
        }
        Ok(())
    }

    /// The end of the first delimiter in `carry ++ content`, as an offset into `content`; when
    /// there is none, keeps the last bytes of `content` as the new carry.
    fn find_delimiter(&mut self, content: &[u8]) -> Option<usize> {
        let finder = if self.opened {
            &self.delimiter
        } else {
            &self.first_delimiter
        };
        let length = finder.needle().len();
        // A delimiter that starts in the carry and ends in this content.
        if !self.carry.is_empty() {
            let head = &content[..content.len().min(length - 1)];
            let mut window = self.carry.clone();
            window.extend_from_slice(head);
            if let Some(start) = finder.find(&window)
                && start < self.carry.len()
            {
                return Some(start + length - self.carry.len());
            }
        }
        if let Some(start) = finder.find(content) {
            return Some(start + length);
        }
        let keep = length - 1;
        if content.len() >= keep {
            self.carry.clear();
            self.carry
                .extend_from_slice(&content[content.len() - keep..]);
        } else {
            self.carry.extend_from_slice(content);
            let excess = self.carry.len().saturating_sub(keep);
            self.carry.drain(..excess);
        }
        None
    }

    /// How many parts have begun.
    #[cfg(test)]
    fn parts(&self) -> usize {
        self.parts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: MultipartLimits = MultipartLimits {
        max_parts: 3,
        max_header_bytes: 64,
    };

    fn body(parts: &[(&str, &[u8])]) -> Vec<u8> {
        let mut body = Vec::new();
        for (header, content) in parts {
            body.extend_from_slice(b"--b0und\r\n");
            body.extend_from_slice(header.as_bytes());
            body.extend_from_slice(b"\r\n");
            body.extend_from_slice(content);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(b"--b0und--\r\nepilogue\r\n\r\n--b0und\r\n");
        body
    }

    /// Scans `bytes` in chunks of every size from 1 to 17, so every split of a delimiter or a
    /// header end across chunks is tried.
    fn scan_all(bytes: &[u8], limits: &MultipartLimits) -> Vec<Result<usize, String>> {
        (1..=17)
            .map(|chunk_size| {
                let mut scanner = MultipartScanner::new("b0und").expect("boundary");
                for chunk in bytes.chunks(chunk_size) {
                    scanner.scan(chunk, limits).map_err(|e| e.to_string())?;
                }
                Ok(scanner.parts())
            })
            .collect()
    }

    #[test]
    fn counts_parts_whatever_the_chunking() {
        let bytes = body(&[
            ("Content-Type: application/dicom\r\n", b"DICM\r\n--b0un"),
            ("X: y\r\n", b"\r\r\n\r\n"),
            ("Content-Type: application/dicom\r\n", b""),
        ]);
        for result in scan_all(&bytes, &LIMITS) {
            assert_eq!(result, Ok(3));
        }
        // A preamble before the first delimiter is content, not a part.
        let mut with_preamble = b"preamble\r\n".to_vec();
        with_preamble.extend_from_slice(&bytes);
        for result in scan_all(&with_preamble, &LIMITS) {
            assert_eq!(result, Ok(3));
        }
    }

    #[test]
    fn near_delimiters_in_content_are_content() {
        // Every prefix of the delimiter, and the delimiter with its last byte changed, inside
        // a part's content: none of them starts a part, however the body is cut into chunks.
        let delimiter = b"\r\n--b0und";
        let mut content = Vec::new();
        for length in 1..delimiter.len() {
            content.extend_from_slice(&delimiter[..length]);
            content.push(b'x');
        }
        content.extend_from_slice(b"\r\n--b0unD\r\r\n--b0un\r\n-");
        let bytes = body(&[("X: y\r\n", &content), ("X: z\r\n", &content)]);
        for result in scan_all(&bytes, &LIMITS) {
            assert_eq!(result, Ok(2));
        }
    }

    #[test]
    fn refuses_too_many_parts() {
        let header = "Content-Type: application/dicom\r\n";
        let bytes = body(&[
            (header, b"a"),
            (header, b"b"),
            (header, b"c"),
            (header, b"d"),
        ]);
        for result in scan_all(&bytes, &LIMITS) {
            assert_eq!(result, Err("the request has more than 3 parts".to_string()));
        }
    }

    #[test]
    fn refuses_a_header_that_never_ends() {
        let mut bytes = b"--b0und\r\nX-Long: ".to_vec();
        bytes.extend(std::iter::repeat_n(b'a', 1000));
        for result in scan_all(&bytes, &LIMITS) {
            assert_eq!(result, Err("a part header exceeds 64 bytes".to_string()));
        }
        // The header counts from the delimiter's line end to the blank line: 2 + 3 + 55 + 4
        // bytes is exactly the limit, one more is past it.
        let header = format!("X: {}\r\n", "a".repeat(55));
        for result in scan_all(&body(&[(&header, b"x")]), &LIMITS) {
            assert_eq!(result, Ok(1));
        }
        let header = format!("X: {}\r\n", "a".repeat(56));
        for result in scan_all(&body(&[(&header, b"x")]), &LIMITS) {
            assert_eq!(result, Err("a part header exceeds 64 bytes".to_string()));
        }
    }

    #[test]
    fn a_delimiter_in_the_preamble_needs_no_line_end_before_it() {
        // The parser takes the first `--b0und` anywhere as the first delimiter; so must the
        // scanner, or that part's header and count would escape the limits.
        let mut bytes = b"preamble\r\x0e--b0und\r\nX-Long: ".to_vec();
        bytes.extend(std::iter::repeat_n(b'a', 1000));
        for result in scan_all(&bytes, &LIMITS) {
            assert_eq!(result, Err("a part header exceeds 64 bytes".to_string()));
        }
        let header = "Content-Type: application/dicom\r\n";
        let mut bytes = b"x--b0und\r\nX: y\r\n\r\n\r\n".to_vec();
        bytes.extend_from_slice(&body(&[(header, b"a"), (header, b"b"), (header, b"c")]));
        for result in scan_all(&bytes, &LIMITS) {
            assert_eq!(result, Err("the request has more than 3 parts".to_string()));
        }
    }

    #[test]
    fn a_header_ends_at_the_first_blank_line_after_the_delimiter_line() {
        // Transport padding on the delimiter line, then header fields.
        let bytes = b"--b0und \t\r\nX: y\r\n\r\ncontent\r\n--b0und--";
        for result in scan_all(bytes, &LIMITS) {
            assert_eq!(result, Ok(1));
        }
        // No header fields: the parser still looks for a blank line after the delimiter's
        // line end, so content without one is measured as header.
        let mut bytes = b"--b0und\r\n\r\n".to_vec();
        bytes.extend(std::iter::repeat_n(b'a', 1000));
        bytes.extend_from_slice(b"\r\n--b0und--");
        for result in scan_all(&bytes, &LIMITS) {
            assert_eq!(result, Err("a part header exceeds 64 bytes".to_string()));
        }
    }

    #[test]
    fn boundaries_are_bounded() {
        assert!(MultipartScanner::new("").is_none());
        assert!(MultipartScanner::new(&"b".repeat(MAX_BOUNDARY_LEN)).is_some());
        assert!(MultipartScanner::new(&"b".repeat(MAX_BOUNDARY_LEN + 1)).is_none());
    }
}
