//! Normalization of values before they become search terms: the same rules are applied when
//! indexing and when querying, so that matching can run on keyed tokens of normalized values.
//!
//! - exact values lose the padding DICOM allows around them (spaces, trailing NULs) and keep
//!   their case, because DICOM matching of UIDs, IDs and codes is case-sensitive;
//! - person names are split into words (every component of every name group), lowercased and
//!   stripped of accents, so that `fuzzymatching=true` can match word prefixes;
//! - dates become `YYYYMMDD` integers, which order like the dates they stand for.

use unicode_normalization::UnicodeNormalization;

/// The smallest date accepted in a value or a query (1 January 1800).
pub const MIN_DATE: u32 = 18000101;
/// The largest date accepted in a value or a query (31 December 9999).
pub const MAX_DATE: u32 = 99991231;

/// Strips the padding DICOM allows around a value: leading and trailing spaces, and trailing
/// NUL bytes (UIDs are padded with NUL to an even length). The case is kept.
pub fn normalize_exact(value: &str) -> String {
    value
        .trim_matches(|c: char| c == ' ' || c == '\0')
        .to_string()
}

/// Normalizes a person name for exact matching: padding stripped, and the empty trailing
/// components and groups that PS3.5 6.2.1 lets writers omit removed, so that
/// `"Smith^John^^^"` and `"Smith^John"` are the same name. Case and accents are kept.
pub fn normalize_person_name(value: &str) -> String {
    let value = value.trim_matches(|c: char| c == ' ' || c == '\0');
    let groups: Vec<&str> = value
        .split('=')
        .map(|group| group.trim_end_matches(['^', ' ']))
        .collect();
    let used = groups
        .iter()
        .rposition(|group| !group.is_empty())
        .map_or(0, |last| last + 1);
    groups[..used].join("=")
}

/// Lowercases a word and removes its accents, so `Jöhn`, `JOHN` and full-width `ＪＯＨＮ` all
/// become `john`: Unicode compatibility decomposition (NFKD), removal of the combining
/// diacritical marks, lowercasing, then recomposition (NFC). Only diacritics are removed: marks
/// that change a letter of other scripts (the kana voicing marks, Hangul jamo) are recomposed.
pub fn fold_word(word: &str) -> String {
    let stripped: String = word
        .nfkd()
        .filter(|c| !is_diacritical_mark(*c))
        .flat_map(char::to_lowercase)
        .collect();
    stripped.nfc().collect()
}

/// Combining marks of the diacritical blocks (accents, cedillas, rings, tildes...).
fn is_diacritical_mark(c: char) -> bool {
    matches!(
        c,
        '\u{0300}'..='\u{036F}'
            | '\u{1AB0}'..='\u{1AFF}'
            | '\u{1DC0}'..='\u{1DFF}'
            | '\u{20D0}'..='\u{20FF}'
            | '\u{FE20}'..='\u{FE2F}'
    )
}

/// The characters that separate the words of a person name: `^` between components, `=`
/// between the alphabetic, ideographic and phonetic groups, and white space inside components.
fn is_name_separator(c: char) -> bool {
    c == '^' || c == '=' || c.is_whitespace() || c == '\0'
}

/// The words of a person name value, in order of first appearance and without duplicates: each
/// component of each group, split on white space, folded with [`fold_word`].
///
/// `"Müller^Hans Peter=ミュラー^ハンス"` gives `["muller", "hans", "peter", "ミュラー", "ハンス"]`.
pub fn name_words(value: &str) -> Vec<String> {
    let mut words: Vec<String> = Vec::new();
    for raw in value.split(is_name_separator) {
        if raw.is_empty() {
            continue;
        }
        let folded = fold_word(raw);
        if !folded.is_empty() && !words.contains(&folded) {
            words.push(folded);
        }
    }
    words
}

/// The word prefixes of a fuzzy person-name query, folded like [`name_words`]: a query such as
/// `"joh^smi"`, `"Jöhn"` or `"smi*"` gives the prefixes each of which must start some word of
/// a matching name. Wildcards (`*`, `?`) only separate words here, since fuzzy matching already
/// matches prefixes.
pub fn fuzzy_query_words(query: &str) -> Vec<String> {
    let mut words: Vec<String> = Vec::new();
    for raw in query.split(|c: char| is_name_separator(c) || c == '*' || c == '?' || c == ',') {
        if raw.is_empty() {
            continue;
        }
        let folded = fold_word(raw);
        if !folded.is_empty() && !words.contains(&folded) {
            words.push(folded);
        }
    }
    words
}

/// Parses a DA value (`YYYYMMDD`, or the pre-1993 `YYYY.MM.DD` form, padding allowed) into a
/// `YYYYMMDD` integer; `None` when it is not a real calendar date between [`MIN_DATE`] and
/// [`MAX_DATE`].
pub fn parse_date(value: &str) -> Option<u32> {
    let value = value.trim_matches(|c: char| c == ' ' || c == '\0');
    let digits: String = match value.len() {
        8 => value.to_string(),
        10 => {
            let bytes = value.as_bytes();
            if bytes[4] != b'.' || bytes[7] != b'.' {
                return None;
            }
            value.split('.').collect()
        }
        _ => return None,
    };
    if digits.len() != 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let date: u32 = digits.parse().ok()?;
    let (year, month, day) = (date / 10000, date / 100 % 100, date % 100);
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return None;
    }
    (MIN_DATE..=MAX_DATE).contains(&date).then_some(date)
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        4 | 6 | 9 | 11 => 30,
        2 if (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400) => {
            29
        }
        2 => 28,
        _ => 31,
    }
}

/// Why a date query could not be parsed. The message never repeats the query.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DateRangeError {
    /// A bound is not a valid date (`YYYYMMDD` between 1800 and 9999).
    #[error("invalid date in date query")]
    InvalidDate,
    /// `-` alone, or an empty query.
    #[error("date range without any bound")]
    Unbounded,
    /// The lower bound is after the upper bound.
    #[error("date range whose start is after its end")]
    Reversed,
}

/// Parses a DA query: `a` (a single date, returned as `(Some(a), Some(a))`), `a-b`, `a-` or
/// `-b`. Bounds are inclusive.
pub fn parse_date_range(query: &str) -> Result<(Option<u32>, Option<u32>), DateRangeError> {
    let query = query.trim_matches(|c: char| c == ' ' || c == '\0');
    let Some((start, end)) = query.split_once('-') else {
        if query.is_empty() {
            return Err(DateRangeError::Unbounded);
        }
        let date = parse_date(query).ok_or(DateRangeError::InvalidDate)?;
        return Ok((Some(date), Some(date)));
    };
    let bound = |text: &str| -> Result<Option<u32>, DateRangeError> {
        let text = text.trim();
        if text.is_empty() {
            Ok(None)
        } else {
            parse_date(text)
                .map(Some)
                .ok_or(DateRangeError::InvalidDate)
        }
    };
    let (start, end) = (bound(start)?, bound(end)?);
    match (start, end) {
        (None, None) => Err(DateRangeError::Unbounded),
        (Some(start), Some(end)) if start > end => Err(DateRangeError::Reversed),
        bounds => Ok(bounds),
    }
}

/// Whether `value` is a valid UID once its padding is stripped: 1 to 64 characters, digits and
/// dots only.
pub fn is_valid_uid(value: &str) -> bool {
    let value = value.trim_end_matches(['\0', ' ']);
    (1..=64).contains(&value.len()) && value.bytes().all(|b| b.is_ascii_digit() || b == b'.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_strips_padding_and_keeps_case() {
        assert_eq!(normalize_exact(" AB12 \0"), "AB12");
        assert_eq!(normalize_exact("1.2.3\0"), "1.2.3");
        assert_eq!(normalize_exact("Ab c"), "Ab c");
    }

    #[test]
    fn person_names_drop_empty_trailing_components() {
        assert_eq!(normalize_person_name("Smith^John^^^ "), "Smith^John");
        assert_eq!(normalize_person_name("Smith^John=="), "Smith^John");
        assert_eq!(normalize_person_name("=山田^太郎"), "=山田^太郎");
        assert_eq!(normalize_person_name("^^"), "");
    }

    #[test]
    fn name_words_split_fold_and_dedupe() {
        assert_eq!(
            name_words("Müller^Hans Peter^^Dr.^=MÜLLER^HANS"),
            vec!["muller", "hans", "peter", "dr."]
        );
        assert_eq!(name_words("Ŝtefan^Ångström"), vec!["stefan", "angstrom"]);
        assert_eq!(
            name_words("Yamada^Tarou=山田^太郎=やまだ^たろう"),
            vec!["yamada", "tarou", "山田", "太郎", "やまだ", "たろう"]
        );
        assert!(name_words("^^ ").is_empty());
        assert_eq!(
            name_words("ＪＯＨＮ^ﾔﾏﾀﾞ^François^Łukasz"),
            vec!["john", "ヤマダ", "francois", "łukasz"]
        );
    }

    #[test]
    fn fuzzy_query_words_fold_like_names() {
        assert_eq!(fuzzy_query_words("joh^smi"), vec!["joh", "smi"]);
        assert_eq!(fuzzy_query_words("Jöhn"), vec!["john"]);
        assert_eq!(fuzzy_query_words("SMI* jo"), vec!["smi", "jo"]);
        assert!(fuzzy_query_words("*").is_empty());
    }

    #[test]
    fn dates_parse_in_both_forms_and_reject_bad_days() {
        assert_eq!(parse_date("20240229"), Some(20240229));
        assert_eq!(parse_date("1999.12.31"), Some(19991231));
        assert_eq!(parse_date("20230229"), None);
        assert_eq!(parse_date("19001301"), None);
        assert_eq!(parse_date("17991231"), None);
        assert_eq!(parse_date("2024-01-01"), None);
        assert_eq!(parse_date("2024010"), None);
        assert_eq!(parse_date("2024.0101."), None);
        assert_eq!(parse_date("20240101 "), Some(20240101));
    }

    #[test]
    fn date_ranges() {
        assert_eq!(
            parse_date_range("20200101-20201231"),
            Ok((Some(20200101), Some(20201231)))
        );
        assert_eq!(parse_date_range("20200101-"), Ok((Some(20200101), None)));
        assert_eq!(parse_date_range("-20200101"), Ok((None, Some(20200101))));
        assert_eq!(
            parse_date_range("20200101"),
            Ok((Some(20200101), Some(20200101)))
        );
        assert_eq!(parse_date_range("-"), Err(DateRangeError::Unbounded));
        assert_eq!(parse_date_range(""), Err(DateRangeError::Unbounded));
        assert_eq!(
            parse_date_range("20201231-20200101"),
            Err(DateRangeError::Reversed)
        );
        assert_eq!(
            parse_date_range("2020-01-01"),
            Err(DateRangeError::InvalidDate)
        );
    }

    #[test]
    fn uids() {
        assert!(is_valid_uid("1.2.840.10008.1.2\0"));
        assert!(!is_valid_uid(""));
        assert!(!is_valid_uid("1.2.a"));
        assert!(!is_valid_uid(&"1".repeat(65)));
        assert!(is_valid_uid(&"1".repeat(64)));
    }
}
