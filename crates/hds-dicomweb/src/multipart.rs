//! `multipart/related` responses (PS3.18 8.7.1), streamed part by part.

use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt};

/// A fresh random boundary: it must not occur inside any part, and 128 random bits make that
/// as unlikely as guessing a key.
pub fn new_boundary() -> String {
    let random: [u8; 16] = rand::random();
    format!("hds-{}", hex::encode(random))
}

/// The Content-Type of a multipart/related response whose parts are `part_type`.
pub fn content_type(boundary: &str, part_type: &str) -> String {
    format!("multipart/related; type=\"{part_type}\"; boundary={boundary}")
}

/// The bytes that open a part.
pub fn part_header(boundary: &str, content_type: &str, content_location: Option<&str>) -> Bytes {
    let mut header = format!("\r\n--{boundary}\r\nContent-Type: {content_type}\r\n");
    if let Some(location) = content_location {
        header.push_str(&format!("Content-Location: {location}\r\n"));
    }
    header.push_str("\r\n");
    Bytes::from(header)
}

/// The bytes that close the whole body.
pub fn closing(boundary: &str) -> Bytes {
    Bytes::from(format!("\r\n--{boundary}--\r\n"))
}

/// One part of a multipart response: its content type, its optional Content-Location, and its
/// body.
pub type Part<E> = (String, Option<String>, BoxStream<'static, Result<Bytes, E>>);

/// Joins part streams into one body stream with headers and the closing boundary. An error in
/// a part ends the stream with that error, without the closing boundary, so a client can tell a
/// cut response from a complete one.
///
/// `parts` is consumed lazily: a part is taken from it only when the previous one is finished,
/// so a response of many parts opens (and holds) one part's resources at a time.
pub fn body<E, I>(boundary: String, parts: I) -> BoxStream<'static, Result<Bytes, E>>
where
    E: Send + 'static,
    I: IntoIterator<Item = Part<E>>,
    I::IntoIter: Send + 'static,
{
    let closing_bytes = closing(&boundary);
    let opened = parts
        .into_iter()
        .map(move |(content_type, location, part)| {
            let header = part_header(&boundary, &content_type, location.as_deref());
            stream::once(async move { Ok(header) }).chain(part).boxed()
        });
    stream::iter(opened)
        .flatten()
        .chain(stream::once(async move { Ok(closing_bytes) }))
        .boxed()
}
