//! Which tokens a stored value leaves, and which tokens a filter looks for.
//!
//! Matching is token equality only, so every kind of match is turned into "is one of these
//! tokens present":
//! - exact: one token of the normalized value, domain = the attribute's keyword;
//! - fuzzy person name: a token for every prefix of every name word, up to
//!   [`MAX_PREFIX_CHARS`] characters (domain `{keyword}/prefix`); a query word matches when its
//!   own token (of at most as many characters) is present. The cap keeps the tokens of a word
//!   linear in its length: one token per prefix of an unbounded word would hash a quadratic
//!   number of bytes;
//! - dates: one token per level of a hierarchy (domains `{keyword}/C` century `19`, `/X` decade
//!   `199`, `/Y` year `1998`, `/M` month `199803`, `/D` day `19980315`); a range becomes the
//!   smallest set of whole centuries, decades, years, months and days that covers it exactly,
//!   so results (and therefore limit, offset and counts) are exact.

use std::collections::BTreeSet;

use hds_dicom::{SearchTerm, SearchValue};

use crate::{IndexCipher, IndexError};

/// The levels of the date hierarchy: domain suffix and how many leading digits of `YYYYMMDD`.
const DATE_LEVELS: [(&str, usize); 5] = [("C", 2), ("X", 3), ("Y", 4), ("M", 6), ("D", 8)];

/// The longest name-word prefix that gets a token. A query word longer than this matches on
/// its first this-many characters, which no real name shares with another by accident.
pub(crate) const MAX_PREFIX_CHARS: usize = 64;

/// The part of a fuzzy query word that is looked up: its first [`MAX_PREFIX_CHARS`] characters.
pub(crate) fn prefix_query_value(word: &str) -> &str {
    match word.char_indices().nth(MAX_PREFIX_CHARS) {
        Some((end, _)) => &word[..end],
        None => word,
    }
}

/// The lowest and highest dates a range can mean (open bounds become these).
const FIRST_DATE: u32 = 101;
const LAST_DATE: u32 = 9999_1231;

/// The domain of exact tokens of an attribute.
pub(crate) fn exact_domain(keyword: &str) -> String {
    keyword.to_owned()
}

/// The domain of name-word prefix tokens of a person-name attribute.
pub(crate) fn prefix_domain(keyword: &str) -> String {
    format!("{keyword}/prefix")
}

fn date_domain(keyword: &str, level: &str) -> String {
    format!("{keyword}/{level}")
}

/// Adds the tokens one stored search term leaves to `tokens`.
pub(crate) fn term_tokens(
    cipher: &dyn IndexCipher,
    service: &str,
    term: &SearchTerm,
    tokens: &mut BTreeSet<Vec<u8>>,
) -> Result<(), IndexError> {
    value_tokens(cipher, service, term.attribute.keyword, &term.value, tokens)
}

/// Adds the tokens a stored value of the attribute whose domain is `keyword` leaves to
/// `tokens` (an extended query tag's domain is its `x:{key}`).
pub(crate) fn value_tokens(
    cipher: &dyn IndexCipher,
    service: &str,
    keyword: &str,
    value: &SearchValue,
    tokens: &mut BTreeSet<Vec<u8>>,
) -> Result<(), IndexError> {
    match value {
        SearchValue::Exact(value) => {
            tokens.insert(cipher.token(service, &exact_domain(keyword), value)?);
        }
        SearchValue::PersonName { exact, words } => {
            tokens.insert(cipher.token(service, &exact_domain(keyword), exact)?);
            let domain = prefix_domain(keyword);
            for word in words {
                let word = prefix_query_value(word);
                for (end, _) in word.char_indices().skip(1) {
                    tokens.insert(cipher.token(service, &domain, &word[..end])?);
                }
                if !word.is_empty() {
                    tokens.insert(cipher.token(service, &domain, word)?);
                }
            }
        }
        SearchValue::Date(date) => {
            let digits = format!("{date:08}");
            for (level, length) in DATE_LEVELS {
                if let Some(prefix) = digits.get(..length) {
                    tokens.insert(cipher.token(service, &date_domain(keyword, level), prefix)?);
                }
            }
        }
    }
    Ok(())
}

/// The token an exact match on a date attribute looks for (`YYYYMMDD` as a whole day).
pub(crate) fn exact_date_token(
    cipher: &dyn IndexCipher,
    service: &str,
    keyword: &str,
    value: &str,
) -> Result<Vec<u8>, IndexError> {
    if value.len() == 8 && value.bytes().all(|byte| byte.is_ascii_digit()) {
        cipher.token(service, &date_domain(keyword, "D"), value)
    } else {
        cipher.token(service, &exact_domain(keyword), value)
    }
}

/// The tokens of the dates in `[from, to]` (inclusive; open bounds are the first and last
/// representable dates): any one of them present means the stored date is in the range.
pub(crate) fn date_range_tokens(
    cipher: &dyn IndexCipher,
    service: &str,
    keyword: &str,
    from: Option<u32>,
    to: Option<u32>,
) -> Result<Vec<Vec<u8>>, IndexError> {
    date_range_cover(from.unwrap_or(FIRST_DATE), to.unwrap_or(LAST_DATE))
        .into_iter()
        .map(|(level, prefix)| cipher.token(service, &date_domain(keyword, level), &prefix))
        .collect()
}

/// One block of the date hierarchy: its level, its leading digits, and the first and last real
/// dates it holds.
#[derive(Debug, Clone, Copy)]
struct DateBlock {
    /// Index into [`DATE_LEVELS`].
    level: usize,
    /// The leading digits, as a number (`1998` for a year block).
    prefix: u32,
}

impl DateBlock {
    fn digits(self) -> usize {
        DATE_LEVELS[self.level].1
    }

    fn label(self) -> String {
        format!("{:0width$}", self.prefix, width = self.digits())
    }

    /// The earliest and latest valid dates in this block (`YYYYMMDD` numbers).
    fn bounds(self) -> (u32, u32) {
        match DATE_LEVELS[self.level].0 {
            "C" => (
                self.prefix * 100_0000 + 101,
                self.prefix * 100_0000 + 99_1231,
            ),
            "X" => (self.prefix * 10_0000 + 101, self.prefix * 10_0000 + 9_1231),
            "Y" => (self.prefix * 1_0000 + 101, self.prefix * 1_0000 + 1231),
            "M" => {
                let year = self.prefix / 100;
                let month = self.prefix % 100;
                (
                    self.prefix * 100 + 1,
                    self.prefix * 100 + days_in_month(year, month),
                )
            }
            _ => (self.prefix, self.prefix),
        }
    }

    /// The blocks one level down that hold valid dates.
    fn children(self) -> Vec<DateBlock> {
        let level = self.level + 1;
        let prefixes: Vec<u32> = match DATE_LEVELS[self.level].0 {
            "C" | "X" => (0..10).map(|digit| self.prefix * 10 + digit).collect(),
            "Y" => (1..=12).map(|month| self.prefix * 100 + month).collect(),
            "M" => {
                let days = days_in_month(self.prefix / 100, self.prefix % 100);
                (1..=days).map(|day| self.prefix * 100 + day).collect()
            }
            _ => Vec::new(),
        };
        prefixes
            .into_iter()
            .map(|prefix| DateBlock { level, prefix })
            .collect()
    }
}

fn is_leap_year(year: u32) -> bool {
    (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400)
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        2 if is_leap_year(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// The fewest blocks (level and leading digits) whose valid dates are exactly the valid dates
/// in `[from, to]`: a block is taken whole when all its dates are in range, skipped when none
/// are, and split into its children otherwise.
pub(crate) fn date_range_cover(from: u32, to: u32) -> Vec<(&'static str, String)> {
    let mut cover = Vec::new();
    if from > to {
        return cover;
    }
    let mut pending: Vec<DateBlock> = (0..100)
        .rev()
        .map(|prefix| DateBlock { level: 0, prefix })
        .collect();
    while let Some(block) = pending.pop() {
        let (first, last) = block.bounds();
        if last < from || first > to {
            continue;
        }
        if from <= first && last <= to {
            cover.push((DATE_LEVELS[block.level].0, block.label()));
            continue;
        }
        // Partly in range: a day block is never partly in range, so this has children.
        pending.extend(block.children().into_iter().rev());
    }
    cover
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(from: u32, to: u32) -> Vec<String> {
        date_range_cover(from, to)
            .into_iter()
            .map(|(level, prefix)| format!("{level}:{prefix}"))
            .collect()
    }

    #[test]
    fn prefixes_stop_at_the_cap() {
        assert_eq!(prefix_query_value("smith"), "smith");
        let long: String = "\u{e9}".repeat(MAX_PREFIX_CHARS + 10);
        let capped = prefix_query_value(&long);
        assert_eq!(capped.chars().count(), MAX_PREFIX_CHARS);
        assert!(long.starts_with(capped));
        let exact: String = "x".repeat(MAX_PREFIX_CHARS);
        assert_eq!(prefix_query_value(&exact), exact);
    }

    #[test]
    fn whole_units_become_one_token() {
        assert_eq!(labels(1998_0101, 1998_1231), ["Y:1998"]);
        assert_eq!(labels(1998_0201, 1998_0228), ["M:199802"]);
        assert_eq!(
            labels(2000_0201, 2000_0228),
            (1..=28)
                .map(|day| format!("D:200002{day:02}"))
                .collect::<Vec<_>>()
        );
        assert_eq!(labels(2000_0201, 2000_0229), ["M:200002"]);
        assert_eq!(labels(1990_0101, 1999_1231), ["X:199"]);
        assert_eq!(labels(1900_0101, 1999_1231), ["C:19"]);
        assert_eq!(labels(1998_0315, 1998_0315), ["D:19980315"]);
    }

    #[test]
    fn ranges_across_boundaries_are_small() {
        assert_eq!(
            labels(1998_1230, 2001_0102),
            [
                "D:19981230",
                "D:19981231",
                "Y:1999",
                "Y:2000",
                "D:20010101",
                "D:20010102"
            ]
        );
        // The open-ended ranges stay well under a hundred tokens.
        assert!(labels(FIRST_DATE, 1950_0615).len() < 60);
        assert!(labels(1800_0101, LAST_DATE).len() < 100);
        assert!(labels(1999_0101, 1998_0101).is_empty());
    }
}
