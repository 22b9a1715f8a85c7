//! Media types: what a request sends and what a client accepts (PS3.18 8.7).

use axum::http::HeaderMap;
use axum::http::header::{ACCEPT, CONTENT_TYPE};

use crate::DicomWebError;

/// Explicit VR Little Endian: what is returned when the client names no transfer syntax.
pub const EXPLICIT_VR_LITTLE_ENDIAN: &str = "1.2.840.10008.1.2.1";

/// One media range of an Accept header, or a Content-Type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaRange {
    /// `type/subtype`, lowercase.
    pub essence: String,
    /// Parameters, names lowercase, values unquoted.
    pub parameters: Vec<(String, String)>,
}

impl MediaRange {
    /// Parses `type/subtype; name=value; ...`.
    pub fn parse(text: &str) -> Option<MediaRange> {
        let mut pieces = split_outside_quotes(text, ';').into_iter();
        let essence = pieces.next()?.trim().to_ascii_lowercase();
        if !essence.contains('/') {
            return None;
        }
        let parameters = pieces
            .filter_map(|piece| {
                let (name, value) = piece.split_once('=')?;
                Some((
                    name.trim().to_ascii_lowercase(),
                    value.trim().trim_matches('"').to_owned(),
                ))
            })
            .collect();
        Some(MediaRange {
            essence,
            parameters,
        })
    }

    /// A parameter's value.
    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.parameters
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    fn quality(&self) -> f32 {
        self.parameter("q")
            .and_then(|q| q.parse().ok())
            .unwrap_or(1.0)
    }
}

/// Splits on `separator` except inside double quotes.
fn split_outside_quotes(text: &str, separator: char) -> Vec<&str> {
    let mut pieces = Vec::new();
    let mut quoted = false;
    let mut start = 0;
    for (index, character) in text.char_indices() {
        if character == '"' {
            quoted = !quoted;
        } else if character == separator && !quoted {
            pieces.push(&text[start..index]);
            start = index + 1;
        }
    }
    pieces.push(&text[start..]);
    pieces
}

/// The media ranges of the Accept header, best first; `*/*` when there is none.
pub fn accepted(headers: &HeaderMap) -> Vec<MediaRange> {
    let mut ranges: Vec<MediaRange> = headers
        .get_all(ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| split_outside_quotes(value, ','))
        .filter_map(MediaRange::parse)
        .filter(|range| range.quality() > 0.0)
        .collect();
    if ranges.is_empty() {
        ranges.push(MediaRange {
            essence: "*/*".into(),
            parameters: Vec::new(),
        });
    }
    ranges.sort_by(|a, b| b.quality().total_cmp(&a.quality()));
    ranges
}

/// The request's Content-Type.
pub fn content_type(headers: &HeaderMap) -> Option<MediaRange> {
    headers
        .get(CONTENT_TYPE)?
        .to_str()
        .ok()
        .and_then(MediaRange::parse)
}

/// How retrieved instances or frames are packaged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packaging {
    /// `multipart/related` with one part per item.
    Multipart,
    /// The single item as the whole body.
    Single,
}

/// What the client asked for, resolved against what is stored.
#[derive(Debug, Clone)]
pub struct Negotiated {
    /// Multipart or single part.
    pub packaging: Packaging,
    /// Items stored in another syntax are transcoded to Explicit VR Little Endian.
    pub transcode: bool,
}

/// Chooses how to return items of `part_type` (`application/dicom` or
/// `application/octet-stream`) stored in `stored_syntaxes`, given the Accept header, without
/// transcoding: without a transfer-syntax parameter only `acceptable_without_parameter`
/// syntaxes can be returned, so anything else asks the client for `transfer-syntax=*`.
#[cfg(test)]
pub fn negotiate(
    headers: &HeaderMap,
    part_type: &'static str,
    stored_syntaxes: &[&str],
    acceptable_without_parameter: impl Fn(&str) -> bool,
    single_allowed: bool,
) -> Result<Negotiated, DicomWebError> {
    negotiate_with_transcoding(
        headers,
        part_type,
        stored_syntaxes,
        acceptable_without_parameter,
        |_| false,
        single_allowed,
    )
}

/// As [`negotiate`], where items stored in a `transcodable` syntax can also be returned in
/// Explicit VR Little Endian: when the client names that syntax, or none.
pub fn negotiate_with_transcoding(
    headers: &HeaderMap,
    part_type: &'static str,
    stored_syntaxes: &[&str],
    acceptable_without_parameter: impl Fn(&str) -> bool,
    transcodable: impl Fn(&str) -> bool,
    single_allowed: bool,
) -> Result<Negotiated, DicomWebError> {
    let as_stored = |packaging| Negotiated {
        packaging,
        transcode: false,
    };
    let transcoded = |packaging| Negotiated {
        packaging,
        transcode: true,
    };
    let all_transcodable = || {
        stored_syntaxes
            .iter()
            .all(|stored| *stored == EXPLICIT_VR_LITTLE_ENDIAN || transcodable(stored))
    };
    let untranscodable = || {
        let mut syntaxes: Vec<&str> = stored_syntaxes
            .iter()
            .copied()
            .filter(|stored| *stored != EXPLICIT_VR_LITTLE_ENDIAN && !transcodable(stored))
            .collect();
        syntaxes.sort_unstable();
        syntaxes.dedup();
        syntaxes.join(", ")
    };
    let mut transfer_syntax_problem = None;
    for range in accepted(headers) {
        let packaging = match range.essence.as_str() {
            "multipart/related" => match range.parameter("type") {
                None => Packaging::Multipart,
                Some(inner) if inner.eq_ignore_ascii_case(part_type) || inner == "*/*" => {
                    Packaging::Multipart
                }
                Some(_) => continue,
            },
            "*/*" | "multipart/*" => Packaging::Multipart,
            essence if essence == part_type && single_allowed => Packaging::Single,
            _ => continue,
        };
        match range.parameter("transfer-syntax") {
            Some("*") => return Ok(as_stored(packaging)),
            Some(wanted) => {
                if stored_syntaxes.iter().all(|stored| *stored == wanted) {
                    return Ok(as_stored(packaging));
                }
                if wanted == EXPLICIT_VR_LITTLE_ENDIAN && all_transcodable() {
                    return Ok(transcoded(packaging));
                }
                transfer_syntax_problem = Some(if wanted == EXPLICIT_VR_LITTLE_ENDIAN {
                    format!(
                        "the data is stored in transfer syntax {}, which hds cannot transcode; \
                         ask for transfer-syntax=* to receive it as stored",
                        untranscodable()
                    )
                } else {
                    format!(
                        "the data is not stored in transfer syntax {wanted} and hds transcodes \
                         only to Explicit VR Little Endian ({EXPLICIT_VR_LITTLE_ENDIAN}); ask for \
                         that, or for transfer-syntax=* to receive it as stored"
                    )
                });
            }
            None => {
                if stored_syntaxes
                    .iter()
                    .all(|stored| acceptable_without_parameter(stored))
                {
                    return Ok(as_stored(packaging));
                }
                if all_transcodable() {
                    return Ok(transcoded(packaging));
                }
                transfer_syntax_problem = Some(format!(
                    "the data is stored in transfer syntax {}, which hds cannot transcode to \
                     Explicit VR Little Endian; ask for transfer-syntax=* (for example Accept: \
                     multipart/related; type=\"application/dicom\"; transfer-syntax=*) to receive \
                     it as stored",
                    untranscodable()
                ));
            }
        }
    }
    Err(DicomWebError::NotAcceptable(
        transfer_syntax_problem.unwrap_or_else(|| {
            let single = if single_allowed {
                format!(" or {part_type}")
            } else {
                String::new()
            };
            format!("this resource is available as multipart/related; type=\"{part_type}\"{single}")
        }),
    ))
}

/// Whether the client accepts DICOM JSON.
pub fn accepts_dicom_json(headers: &HeaderMap) -> bool {
    accepted(headers).iter().any(|range| {
        matches!(
            range.essence.as_str(),
            "application/dicom+json" | "application/json" | "*/*" | "application/*"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(accept: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            ACCEPT,
            HeaderValue::from_str(accept).unwrap_or(HeaderValue::from_static("*/*")),
        );
        headers
    }

    #[test]
    fn parses_quoted_parameters() {
        let range =
            MediaRange::parse("multipart/related; type=\"application/dicom\"; transfer-syntax=*");
        let range = range.unwrap_or(MediaRange {
            essence: String::new(),
            parameters: vec![],
        });
        assert_eq!(range.essence, "multipart/related");
        assert_eq!(range.parameter("type"), Some("application/dicom"));
        assert_eq!(range.parameter("transfer-syntax"), Some("*"));
    }

    #[test]
    fn explicit_little_endian_needs_no_parameter_but_others_do() {
        let is_default = |syntax: &str| syntax == EXPLICIT_VR_LITTLE_ENDIAN;
        let accept = headers("multipart/related; type=\"application/dicom\"");
        assert!(
            negotiate(
                &accept,
                "application/dicom",
                &[EXPLICIT_VR_LITTLE_ENDIAN],
                is_default,
                true
            )
            .is_ok()
        );
        let refused = negotiate(
            &accept,
            "application/dicom",
            &["1.2.840.10008.1.2.4.50"],
            is_default,
            true,
        );
        assert!(
            matches!(refused, Err(DicomWebError::NotAcceptable(message)) if message.contains("transfer-syntax=*"))
        );
        let star = headers("multipart/related; type=\"application/dicom\"; transfer-syntax=*");
        assert!(
            negotiate(
                &star,
                "application/dicom",
                &["1.2.840.10008.1.2.4.50"],
                is_default,
                true
            )
            .is_ok()
        );
    }

    #[test]
    fn single_part_only_where_allowed() {
        let is_default = |_: &str| true;
        let accept = headers("application/dicom");
        let single = negotiate(&accept, "application/dicom", &[], is_default, true);
        assert!(matches!(
            single,
            Ok(Negotiated {
                packaging: Packaging::Single,
                ..
            })
        ));
        assert!(negotiate(&accept, "application/dicom", &[], is_default, false).is_err());
    }
}
