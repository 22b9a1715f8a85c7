//! ARM's lenient JSON: what Azure Resource Manager accepts beyond RFC 8259 in request bodies.
//!
//! ARM reads bodies with a forgiving parser, and clients rely on it: `az deployment group
//! create` sends the template file's text verbatim under an unquoted `template:` key, so that
//! comments and trailing commas in the file survive. This module rewrites such a body into
//! strict JSON, which `serde_json` (with its nesting limit) then parses:
//!
//! - `// line` and `/* block */` comments outside strings are dropped;
//! - a comma directly before `}` or `]` is dropped;
//! - an object key that is a bare identifier (`template`, `$schema`) is quoted;
//! - a single-quoted string becomes a double-quoted one.
//!
//! The rewrite is one linear pass over the bytes with no recursion, so its cost is bounded by
//! the body limit the caller enforces before calling it; anything it does not recognise is
//! copied through for the strict parser to reject with a position.

/// Rewrites lenient JSON `text` into strict JSON. Fails (with a message for the caller's
/// 400) on an unterminated string or comment.
pub(crate) fn to_strict(text: &str) -> Result<String, &'static str> {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len() + 16);
    let mut index = 0;
    // Where a comma was written that may still turn out to be trailing.
    let mut pending_comma: Option<usize> = None;
    while index < bytes.len() {
        let byte = bytes[index];
        match byte {
            b'"' => {
                pending_comma = None;
                let end = string_end(bytes, index, b'"').ok_or("a string is not terminated")?;
                out.push_str(&text[index..end]);
                index = end;
            }
            b'\'' => {
                pending_comma = None;
                let end = string_end(bytes, index, b'\'').ok_or("a string is not terminated")?;
                push_single_quoted(&mut out, &text[index + 1..end - 1]);
                index = end;
            }
            b'/' if bytes.get(index + 1) == Some(&b'/') => {
                index = bytes[index..]
                    .iter()
                    .position(|&byte| byte == b'\n')
                    .map_or(bytes.len(), |offset| index + offset);
            }
            b'/' if bytes.get(index + 1) == Some(&b'*') => {
                let rest = &text[index + 2..];
                let offset = rest.find("*/").ok_or("a comment is not terminated")?;
                // Keep the comment's line breaks so error positions stay true.
                out.extend(rest[..offset].chars().filter(|&c| c == '\n'));
                out.push(' ');
                index += 2 + offset + 2;
            }
            b',' => {
                pending_comma = Some(out.len());
                out.push(',');
                index += 1;
            }
            b'}' | b']' => {
                if let Some(position) = pending_comma.take() {
                    out.replace_range(position..position + 1, " ");
                }
                out.push(byte as char);
                index += 1;
            }
            _ if is_identifier_start(byte) && key_may_follow(&out) => {
                let end = bytes[index..]
                    .iter()
                    .position(|&byte| !is_identifier_part(byte))
                    .map_or(bytes.len(), |offset| index + offset);
                let word = &text[index..end];
                if next_significant(bytes, end) == Some(b':') {
                    out.push('"');
                    out.push_str(word);
                    out.push('"');
                } else {
                    out.push_str(word);
                }
                pending_comma = None;
                index = end;
            }
            _ => {
                if !byte.is_ascii_whitespace() {
                    pending_comma = None;
                }
                // Copy the whole UTF-8 sequence starting here.
                let width = utf8_width(byte);
                let end = (index + width).min(bytes.len());
                out.push_str(text.get(index..end).ok_or("the text is not valid UTF-8")?);
                index = end;
            }
        }
    }
    Ok(out)
}

/// The index just past the string that opens at `start` with `quote`, honouring escapes.
fn string_end(bytes: &[u8], start: usize, quote: u8) -> Option<usize> {
    let mut index = start + 1;
    while index < bytes.len() {
        match bytes[index] {
            b'\\' => index += 2,
            byte if byte == quote => return Some(index + 1),
            _ => index += 1,
        }
    }
    None
}

/// Writes the body of a single-quoted string as a double-quoted one: `\'` loses its escape,
/// a bare `"` gains one.
fn push_single_quoted(out: &mut String, body: &str) {
    out.push('"');
    let mut chars = body.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some('\'') => out.push('\''),
                Some(other) => {
                    out.push('\\');
                    out.push(other);
                }
                None => out.push('\\'),
            },
            '"' => out.push_str("\\\""),
            other => out.push(other),
        }
    }
    out.push('"');
}

fn is_identifier_start(byte: u8) -> bool {
    byte.is_ascii_alphabetic() || byte == b'_' || byte == b'$'
}

fn is_identifier_part(byte: u8) -> bool {
    is_identifier_start(byte) || byte.is_ascii_digit()
}

/// Whether the last significant character written opens a key position (`{` or `,`).
fn key_may_follow(out: &str) -> bool {
    matches!(
        out.bytes().rev().find(|byte| !byte.is_ascii_whitespace()),
        Some(b'{' | b',')
    )
}

/// The next byte at or after `index` that is neither whitespace nor inside a comment.
fn next_significant(bytes: &[u8], mut index: usize) -> Option<u8> {
    while index < bytes.len() {
        match bytes[index] {
            byte if byte.is_ascii_whitespace() => index += 1,
            b'/' if bytes.get(index + 1) == Some(&b'/') => {
                index += bytes[index..].iter().position(|&byte| byte == b'\n')?;
            }
            b'/' if bytes.get(index + 1) == Some(&b'*') => {
                let offset = bytes[index + 2..]
                    .windows(2)
                    .position(|pair| pair == b"*/")?;
                index += 2 + offset + 2;
            }
            byte => return Some(byte),
        }
    }
    None
}

fn utf8_width(first: u8) -> usize {
    match first {
        0xF0..=0xFF => 4,
        0xE0..=0xEF => 3,
        0xC0..=0xDF => 2,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn parse(text: &str) -> Value {
        let strict = to_strict(text).expect("rewrites");
        serde_json::from_str(&strict).unwrap_or_else(|error| panic!("{error}: {strict}"))
    }

    #[test]
    fn accepts_what_az_sends() {
        let body = r#"{"properties": {template: {
            // a comment
            "$schema": "https://schema.management.azure.com/", /* block
            comment */ "resources": [1, 2, ],
            "s": "has // no comment, and a }",
        }, "mode": "Incremental"}}"#;
        assert_eq!(
            parse(body),
            json!({"properties": {"template": {
                "$schema": "https://schema.management.azure.com/",
                "resources": [1, 2],
                "s": "has // no comment, and a }",
            }, "mode": "Incremental"}})
        );
    }

    #[test]
    fn quotes_bare_keys_and_single_quoted_strings() {
        assert_eq!(
            parse(r#"{a: 'it\'s "x"', $b: true, c_1: null}"#),
            json!({"a": "it's \"x\"", "$b": true, "c_1": null})
        );
        // Literals in value position stay literals.
        assert_eq!(parse("[true, false, null]"), json!([true, false, null]));
        assert_eq!(parse("{\"é\": \"ü\"}"), json!({"é": "ü"}));
    }

    #[test]
    fn strict_json_passes_unchanged() {
        let text = r#"{"a": [1, {"b": "c\"d"}], "e": "//not a comment"}"#;
        assert_eq!(to_strict(text).as_deref(), Ok(text));
    }

    #[test]
    fn refuses_unterminated_input() {
        assert!(to_strict(r#"{"a": "b"#).is_err());
        assert!(to_strict("{/* a").is_err());
        assert!(to_strict("{'a").is_err());
        // Garbage is passed through for the strict parser to refuse.
        let strict = to_strict("{a b}").expect("rewrites");
        assert!(serde_json::from_str::<Value>(&strict).is_err());
        let strict = to_strict("[1,,]").expect("rewrites");
        assert!(serde_json::from_str::<Value>(&strict).is_err());
    }
}
