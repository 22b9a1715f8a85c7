//! The OData `$filter` subset ARM list calls take: clauses joined by `and`, each either
//! `field eq 'value'` or a call `name()` / `name('value')`.
//!
//! That covers what the Azure CLI and SDKs send: `resourceType eq '...' and name eq '...'`
//! on resource lists, `roleName eq '...'` on role definitions, `atScope()`,
//! `principalId eq '...'` and `assignedTo('...')` on role assignments. Anything else is a 400,
//! never ignored: a filter silently dropped returns more than was asked for, which for
//! role lookups means a wrong match.

use http::StatusCode;

use crate::error::ArmError;

/// The longest `$filter` accepted, in bytes.
pub const MAX_FILTER_BYTES: usize = 1024;
/// The most clauses one `$filter` may join.
pub const MAX_FILTER_CLAUSES: usize = 8;

/// One clause of a `$filter`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FilterClause {
    /// `field eq 'value'` (the field as written; compare it case-insensitively).
    Equals {
        /// The field name.
        field: String,
        /// The unquoted value.
        value: String,
    },
    /// `name()` or `name('argument')`.
    Call {
        /// The function name as written.
        name: String,
        /// The unquoted argument, if any.
        argument: Option<String>,
    },
}

impl FilterClause {
    /// The value of `field eq '...'` when this clause is one, `field` compared
    /// case-insensitively.
    pub fn equals(&self, field: &str) -> Option<&str> {
        match self {
            FilterClause::Equals {
                field: name, value, ..
            } if name.eq_ignore_ascii_case(field) => Some(value),
            _ => None,
        }
    }

    /// The clause as written, for error messages.
    pub fn describe(&self) -> String {
        match self {
            FilterClause::Equals { field, .. } => format!("{field} eq"),
            FilterClause::Call { name, .. } => format!("{name}()"),
        }
    }
}

/// A 400 `InvalidFilterInQueryString`, the code ARM answers a `$filter` it cannot use with.
pub fn invalid_filter(message: impl Into<String>) -> ArmError {
    ArmError::new(
        StatusCode::BAD_REQUEST,
        "InvalidFilterInQueryString",
        message.into(),
    )
}

/// Parses `text` (already percent-decoded) into its clauses.
pub fn parse_filter(text: &str) -> Result<Vec<FilterClause>, ArmError> {
    if text.len() > MAX_FILTER_BYTES {
        return Err(invalid_filter(format!(
            "The $filter is longer than {MAX_FILTER_BYTES} bytes."
        )));
    }
    let mut parser = Parser { text, position: 0 };
    let mut clauses = Vec::new();
    loop {
        clauses.push(parser.clause()?);
        if clauses.len() > MAX_FILTER_CLAUSES {
            return Err(invalid_filter(format!(
                "The $filter joins more than {MAX_FILTER_CLAUSES} clauses."
            )));
        }
        parser.skip_spaces();
        if parser.at_end() {
            return Ok(clauses);
        }
        let word = parser.word();
        if !word.eq_ignore_ascii_case("and") {
            return Err(invalid_filter(
                "The $filter is not valid: only clauses joined by 'and' are supported.",
            ));
        }
    }
}

struct Parser<'a> {
    text: &'a str,
    position: usize,
}

impl Parser<'_> {
    fn rest(&self) -> &str {
        &self.text[self.position..]
    }

    fn at_end(&self) -> bool {
        self.position >= self.text.len()
    }

    fn skip_spaces(&mut self) {
        let rest = self.rest();
        self.position += rest.len() - rest.trim_start().len();
    }

    fn word(&mut self) -> &str {
        self.skip_spaces();
        let rest = self.rest();
        let length = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '/' || c == '.'))
            .unwrap_or(rest.len());
        let start = self.position;
        self.position += length;
        &self.text[start..self.position]
    }

    fn expect(&mut self, symbol: char) -> Result<(), ArmError> {
        self.skip_spaces();
        if self.rest().starts_with(symbol) {
            self.position += symbol.len_utf8();
            Ok(())
        } else {
            Err(invalid_filter(format!(
                "The $filter is not valid: '{symbol}' expected at position {}.",
                self.position
            )))
        }
    }

    /// A single-quoted string, `''` standing for one quote.
    fn string(&mut self) -> Result<String, ArmError> {
        self.expect('\'')?;
        let mut value = String::new();
        let mut chars = self.rest().char_indices();
        while let Some((offset, c)) = chars.next() {
            if c == '\'' {
                if self.rest()[offset + 1..].starts_with('\'') {
                    value.push('\'');
                    chars.next();
                    continue;
                }
                self.position += offset + 1;
                return Ok(value);
            }
            value.push(c);
        }
        Err(invalid_filter(
            "The $filter is not valid: a string is not terminated.",
        ))
    }

    fn clause(&mut self) -> Result<FilterClause, ArmError> {
        let name = self.word().to_owned();
        if name.is_empty() {
            return Err(invalid_filter(format!(
                "The $filter is not valid: a field or function expected at position {}.",
                self.position
            )));
        }
        self.skip_spaces();
        if self.rest().starts_with('(') {
            self.position += 1;
            self.skip_spaces();
            let argument = if self.rest().starts_with('\'') {
                Some(self.string()?)
            } else {
                None
            };
            self.expect(')')?;
            return Ok(FilterClause::Call { name, argument });
        }
        let operator = self.word();
        if !operator.eq_ignore_ascii_case("eq") {
            return Err(invalid_filter(
                "The $filter is not valid: only the 'eq' operator is supported.",
            ));
        }
        let value = self.string()?;
        Ok(FilterClause::Equals { field: name, value })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_clients_send() {
        assert_eq!(
            parse_filter("resourceType eq 'Microsoft.KeyVault/vaults' and name eq 'v'")
                .expect("parses"),
            vec![
                FilterClause::Equals {
                    field: "resourceType".into(),
                    value: "Microsoft.KeyVault/vaults".into()
                },
                FilterClause::Equals {
                    field: "name".into(),
                    value: "v".into()
                },
            ]
        );
        assert_eq!(
            parse_filter("atScope() and assignedTo('abc')").expect("parses"),
            vec![
                FilterClause::Call {
                    name: "atScope".into(),
                    argument: None
                },
                FilterClause::Call {
                    name: "assignedTo".into(),
                    argument: Some("abc".into())
                },
            ]
        );
        let clauses = parse_filter("roleName eq 'it''s'").expect("parses");
        assert_eq!(clauses[0].equals("ROLENAME"), Some("it's"));
    }

    #[test]
    fn refuses_hostile_filters() {
        for text in [
            "",
            "name",
            "name ne 'x'",
            "name eq 'x' or name eq 'y'",
            "name eq 'unterminated",
            "name eq x",
            "atScope(",
            "'x' eq name",
            "name eq 'x' and",
        ] {
            let error = parse_filter(text).expect_err(text);
            assert_eq!(error.status(), StatusCode::BAD_REQUEST, "{text}");
        }
        let long = format!("name eq '{}'", "a".repeat(MAX_FILTER_BYTES));
        assert!(parse_filter(&long).is_err());
        let many = ["atScope()"; MAX_FILTER_CLAUSES + 1].join(" and ");
        assert!(parse_filter(&many).is_err());
    }
}
