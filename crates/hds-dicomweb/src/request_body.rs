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
    /// In a part's header, this many bytes in, with this many bytes of `\r\n\r\n` matched.
    Header { bytes: usize, matched: usize },
    /// After the closing delimiter: the epilogue, ignored.
    Epilogue,
}

/// Follows the structure of a multipart body chunk by chunk: counts parts and measures their
/// headers. It does not parse; the multipart parser does, after it.
#[derive(Debug, Clone)]
pub struct MultipartScanner {
    /// `\r\n--{boundary}`.
    delimiter: Vec<u8>,
    /// The last bytes of content seen, fewer than the delimiter's length: a delimiter may be
    /// split across chunks. Starts as `\r\n`, so a body that opens with `--{boundary}` is seen
    /// to open with a delimiter.
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
            delimiter,
            carry: b"\r\n".to_vec(),
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
                        self.state = ScanState::Header {
                            bytes: dashes,
                            matched: 0,
                        };
                    }
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
                        // The blank line may follow the delimiter's line end at once (a part
                        // without header fields): `\r\n` then `\r\n`.
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
        let length = self.delimiter.len();
        // A delimiter that starts in the carry and ends in this content.
        if !self.carry.is_empty() {
            let head = &content[..content.len().min(length - 1)];
            let mut window = self.carry.clone();
            window.extend_from_slice(head);
            if let Some(start) = find(&window, &self.delimiter)
                && start < self.carry.len()
            {
                return Some(start + length - self.carry.len());
            }
        }
        if let Some(start) = find(content, &self.delimiter) {
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

/// The first position of `needle` (which starts with `\r`) in `haystack`: candidates are the
/// positions of `\r`, each compared whole.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || haystack.len() < needle.len() {
        return None;
    }
    let last_start = haystack.len() - needle.len();
    let mut from = 0;
    while from <= last_start {
        let offset = haystack[from..=last_start]
            .iter()
            .position(|&byte| byte == needle[0])?;
        let start = from + offset;
        if &haystack[start..start + needle.len()] == needle {
            return Some(start);
        }
        from = start + 1;
    }
    None
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
            ("", b"\r\r\n\r\n"),
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
    fn refuses_too_many_parts() {
        let bytes = body(&[("", b"a"), ("", b"b"), ("", b"c"), ("", b"d")]);
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
    fn boundaries_are_bounded() {
        assert!(MultipartScanner::new("").is_none());
        assert!(MultipartScanner::new(&"b".repeat(MAX_BOUNDARY_LEN)).is_some());
        assert!(MultipartScanner::new(&"b".repeat(MAX_BOUNDARY_LEN + 1)).is_none());
    }

    #[test]
    fn find_matches_a_naive_search() {
        let haystack = b"\r\r\n-\r\n--x\r\n--\r\n--b\r\n--b0und";
        for length in 0..haystack.len() {
            let hay = &haystack[..length];
            let needle = b"\r\n--b0";
            let naive = hay.windows(needle.len()).position(|w| w == needle);
            assert_eq!(find(hay, needle), naive, "{length}");
        }
    }
}
