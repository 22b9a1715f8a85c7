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
    /// The media type of the parts (or of the single part): one of the resource's part types.
    pub part_type: &'static str,
    /// The transfer syntax items stored in another one are transcoded to; `None` returns
    /// every item as stored.
    pub target: Option<&'static str>,
}

/// The transfer syntaxes a compressed-image part type carries (PS3.18 Table 8.7.3-2), its
/// default first; `None` for `application/dicom` and `application/octet-stream`, which carry
/// any.
fn image_part_syntaxes(part_type: &str) -> Option<&'static [&'static str]> {
    match part_type {
        "image/jpeg" => Some(&[hds_pixels::JPEG_BASELINE]),
        "image/jp2" => Some(&[hds_pixels::JPEG_2000_LOSSLESS, hds_pixels::JPEG_2000]),
        _ => None,
    }
}

/// What a resource offers and what its items are stored in, for [`negotiate`].
pub struct Offer<'a> {
    /// The media types a part may have, the default (for `multipart/related` without a
    /// `type`) first: `application/dicom` for instances; `application/octet-stream`,
    /// `image/jpeg` and `image/jp2` for frames.
    pub part_types: &'a [&'static str],
    /// The transfer syntaxes the items are stored in.
    pub stored_syntaxes: &'a [&'a str],
    /// Stored syntaxes returned as stored to a client that names no transfer syntax.
    pub acceptable_without_parameter: &'a dyn Fn(&str) -> bool,
    /// Stored syntaxes hds can decode, and so transcode to any of
    /// [`hds_pixels::TRANSCODING_TARGETS`].
    pub transcodable: &'a dyn Fn(&str) -> bool,
    /// A single part (not multipart) may be returned: the resource names one item.
    pub single_allowed: bool,
}

/// Chooses how to return the items of `offer` given the Accept header (PS3.18 8.7.3.5): the
/// first acceptable media range, best first, decides the part type and the transfer syntax.
/// `transfer-syntax=*` returns items as stored; a named syntax returns them as stored when they
/// all are in it, or transcoded to it when hds can; no parameter means Explicit VR Little
/// Endian (native samples for frames) for the generic types and the type's default syntax for
/// `image/jpeg` and `image/jp2`. What none of the ranges can get is a 406 naming the stored
/// syntax and what hds offers.
pub fn negotiate(headers: &HeaderMap, offer: &Offer<'_>) -> Result<Negotiated, DicomWebError> {
    let stored = offer.stored_syntaxes;
    let all_transcodable = || {
        stored
            .iter()
            .all(|syntax| *syntax == EXPLICIT_VR_LITTLE_ENDIAN || (offer.transcodable)(syntax))
    };
    let list = |syntaxes: &mut Vec<&str>| {
        syntaxes.sort_unstable();
        syntaxes.dedup();
        syntaxes.join(", ")
    };
    let untranscodable = || {
        let mut syntaxes: Vec<&str> = stored
            .iter()
            .copied()
            .filter(|syntax| *syntax != EXPLICIT_VR_LITTLE_ENDIAN && !(offer.transcodable)(syntax))
            .collect();
        list(&mut syntaxes)
    };
    let stored_list = || list(&mut stored.to_vec());
    let targets = hds_pixels::TRANSCODING_TARGETS.join(", ");
    let mut transfer_syntax_problem = None;
    for range in accepted(headers) {
        let default_part = offer.part_types[0];
        let (packaging, part_type) = match range.essence.as_str() {
            "multipart/related" => match range.parameter("type") {
                None => (Packaging::Multipart, default_part),
                Some("*/*") => (Packaging::Multipart, default_part),
                Some(inner) => match offer
                    .part_types
                    .iter()
                    .find(|part| inner.eq_ignore_ascii_case(part))
                {
                    Some(part) => (Packaging::Multipart, *part),
                    None => continue,
                },
            },
            "*/*" | "multipart/*" => (Packaging::Multipart, default_part),
            essence if offer.single_allowed => {
                match offer.part_types.iter().find(|part| **part == essence) {
                    Some(part) => (Packaging::Single, *part),
                    None => continue,
                }
            }
            _ => continue,
        };
        let as_stored = Negotiated {
            packaging,
            part_type,
            target: None,
        };
        let parameter = range.parameter("transfer-syntax");
        let wanted = match (image_part_syntaxes(part_type), parameter) {
            (None, Some("*")) => return Ok(as_stored),
            (None, None) => {
                if stored
                    .iter()
                    .all(|syntax| (offer.acceptable_without_parameter)(syntax))
                {
                    return Ok(as_stored);
                }
                EXPLICIT_VR_LITTLE_ENDIAN
            }
            (None, Some(wanted)) => wanted,
            (Some(carried), None | Some("*")) => carried[0],
            (Some(carried), Some(wanted)) => {
                if !carried.contains(&wanted) {
                    transfer_syntax_problem = Some(format!(
                        "{part_type} carries transfer syntax {}, not {wanted}",
                        carried.join(" or ")
                    ));
                    continue;
                }
                wanted
            }
        };
        if stored.iter().all(|syntax| *syntax == wanted) {
            return Ok(as_stored);
        }
        let target = hds_pixels::TRANSCODING_TARGETS
            .iter()
            .find(|target| **target == wanted);
        match target {
            Some(target) if all_transcodable() => {
                return Ok(Negotiated {
                    target: Some(target),
                    ..as_stored
                });
            }
            Some(_) => {
                transfer_syntax_problem = Some(format!(
                    "the data is stored in transfer syntax {}, which hds cannot decode, so it \
                     cannot transcode it to {wanted} (hds transcodes to {targets}); ask for \
                     transfer-syntax=* (for example Accept: multipart/related; \
                     type=\"application/dicom\"; transfer-syntax=*) to receive it as stored",
                    untranscodable()
                ));
            }
            None => {
                transfer_syntax_problem = Some(format!(
                    "the data is stored in transfer syntax {} and hds transcodes only to \
                     {targets}, not {wanted}; ask for one of those, or for transfer-syntax=* to \
                     receive it as stored",
                    stored_list()
                ));
            }
        }
    }
    Err(DicomWebError::NotAcceptable(
        transfer_syntax_problem.unwrap_or_else(|| {
            let types = offer
                .part_types
                .iter()
                .map(|part| format!("multipart/related; type=\"{part}\""))
                .collect::<Vec<_>>()
                .join(", ");
            let single = if offer.single_allowed {
                format!(", or {} as a single part", offer.part_types.join(", "))
            } else {
                String::new()
            };
            format!("this resource is available as {types}{single}")
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

    const JPEG_EXTENDED: &str = "1.2.840.10008.1.2.4.51";

    /// Instances: `application/dicom`; `transcodable` says whether stored syntaxes decode.
    fn instances<'a>(
        accept: &str,
        stored: &'a [&'a str],
        transcodable: &'a dyn Fn(&str) -> bool,
        single_allowed: bool,
    ) -> Result<Negotiated, DicomWebError> {
        negotiate(
            &headers(accept),
            &Offer {
                part_types: &["application/dicom"],
                stored_syntaxes: stored,
                acceptable_without_parameter: &|syntax| syntax == EXPLICIT_VR_LITTLE_ENDIAN,
                transcodable,
                single_allowed,
            },
        )
    }

    fn frames<'a>(accept: &str, stored: &'a [&'a str]) -> Result<Negotiated, DicomWebError> {
        negotiate(
            &headers(accept),
            &Offer {
                part_types: &["application/octet-stream", "image/jpeg", "image/jp2"],
                stored_syntaxes: stored,
                acceptable_without_parameter: &|syntax| syntax == EXPLICIT_VR_LITTLE_ENDIAN,
                transcodable: &|syntax| syntax != JPEG_EXTENDED,
                single_allowed: true,
            },
        )
    }

    fn refusal(result: Result<Negotiated, DicomWebError>) -> String {
        match result {
            Err(DicomWebError::NotAcceptable(message)) => message,
            other => panic!("expected a 406, got {other:?}"),
        }
    }

    #[test]
    fn explicit_little_endian_needs_no_parameter_but_others_do() {
        let never = |_: &str| false;
        let accept = "multipart/related; type=\"application/dicom\"";
        assert!(instances(accept, &[EXPLICIT_VR_LITTLE_ENDIAN], &never, true).is_ok());
        let refused = refusal(instances(accept, &["1.2.840.10008.1.2.4.50"], &never, true));
        assert!(refused.contains("transfer-syntax=*"), "{refused}");
        assert!(refused.contains("1.2.840.10008.1.2.4.50"), "{refused}");
        let star = "multipart/related; type=\"application/dicom\"; transfer-syntax=*";
        let as_stored = instances(star, &["1.2.840.10008.1.2.4.50"], &never, true);
        assert!(matches!(as_stored, Ok(Negotiated { target: None, .. })));
    }

    #[test]
    fn single_part_only_where_allowed() {
        let always = |_: &str| true;
        let single = instances("application/dicom", &[], &always, true);
        assert!(matches!(
            single,
            Ok(Negotiated {
                packaging: Packaging::Single,
                ..
            })
        ));
        assert!(instances("application/dicom", &[], &always, false).is_err());
    }

    #[test]
    fn instances_are_transcoded_to_a_named_target_or_refused_naming_source_and_targets() {
        let decodable = |syntax: &str| syntax != JPEG_EXTENDED;
        for target in hds_pixels::TRANSCODING_TARGETS {
            let accept = format!("application/dicom; transfer-syntax={target}");
            let negotiated = instances(&accept, &["1.2.840.10008.1.2.5"], &decodable, true)
                .expect("transcodable");
            assert_eq!(negotiated.target, Some(target));
            assert_eq!(negotiated.packaging, Packaging::Single);
        }
        // Already in the syntax asked for: as stored.
        let jp2k = format!(
            "multipart/related; type=\"application/dicom\"; transfer-syntax={}",
            hds_pixels::JPEG_2000_LOSSLESS
        );
        let same = instances(&jp2k, &[hds_pixels::JPEG_2000_LOSSLESS], &decodable, false);
        assert!(matches!(same, Ok(Negotiated { target: None, .. })));
        // A source hds cannot decode.
        let refused = refusal(instances(&jp2k, &[JPEG_EXTENDED], &decodable, false));
        assert!(refused.contains(JPEG_EXTENDED), "{refused}");
        assert!(refused.contains(hds_pixels::JPEG_BASELINE), "{refused}");
        // A target hds does not produce (JPEG-LS).
        let refused = refusal(instances(
            "application/dicom; transfer-syntax=1.2.840.10008.1.2.4.80",
            &[EXPLICIT_VR_LITTLE_ENDIAN],
            &decodable,
            true,
        ));
        assert!(refused.contains(EXPLICIT_VR_LITTLE_ENDIAN), "{refused}");
        assert!(refused.contains("1.2.840.10008.1.2.4.80"), "{refused}");
    }

    #[test]
    fn frames_as_jpeg_or_jpeg_2000_images() {
        let jp2 = frames(
            "multipart/related; type=\"image/jp2\"",
            &[EXPLICIT_VR_LITTLE_ENDIAN],
        )
        .expect("jp2");
        assert_eq!(jp2.part_type, "image/jp2");
        assert_eq!(jp2.target, Some(hds_pixels::JPEG_2000_LOSSLESS));
        let lossy_syntax = frames(
            "multipart/related; type=\"image/jp2\"; transfer-syntax=1.2.840.10008.1.2.4.91",
            &[EXPLICIT_VR_LITTLE_ENDIAN],
        )
        .expect("jp2 .91");
        assert_eq!(lossy_syntax.target, Some(hds_pixels::JPEG_2000));
        let jpeg = frames("image/jpeg", &[hds_pixels::JPEG_BASELINE]).expect("jpeg");
        assert_eq!((jpeg.part_type, jpeg.target), ("image/jpeg", None));
        assert_eq!(jpeg.packaging, Packaging::Single);
        let octet = frames(
            "multipart/related; type=\"application/octet-stream\"; transfer-syntax=1.2.840.10008.1.2.4.90",
            &["1.2.840.10008.1.2.5"],
        )
        .expect("octet-stream .90");
        assert_eq!(octet.part_type, "application/octet-stream");
        assert_eq!(octet.target, Some(hds_pixels::JPEG_2000_LOSSLESS));
        // image/jp2 carries no JPEG Baseline.
        let refused = refusal(frames(
            "multipart/related; type=\"image/jp2\"; transfer-syntax=1.2.840.10008.1.2.4.50",
            &[EXPLICIT_VR_LITTLE_ENDIAN],
        ));
        assert!(refused.contains("image/jp2"), "{refused}");
        let refused = refusal(frames("image/gif", &[EXPLICIT_VR_LITTLE_ENDIAN]));
        assert!(refused.contains("image/jp2"), "{refused}");
    }
}
