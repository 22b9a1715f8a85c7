//! A small builder for SQL with numbered `$N` parameters, which SQLite and PostgreSQL both
//! accept (sqlx's `QueryBuilder` would write `?` for `Any`, which PostgreSQL refuses).

use std::borrow::Cow;

use sqlx::any::AnyArguments;
use sqlx::query::Query;
use sqlx::{Any, Row};

use crate::IndexError;

/// A bound value, borrowed where the caller keeps it (a stored instance's sealed metadata is
/// bound as it is, not copied).
#[derive(Debug, Clone)]
pub(crate) enum Argument<'a> {
    Text(Cow<'a, str>),
    Bytes(Cow<'a, [u8]>),
    /// Bytes or SQL NULL.
    NullableBytes(Option<Cow<'a, [u8]>>),
    /// Text or SQL NULL.
    NullableText(Option<Cow<'a, str>>),
    Integer(i64),
}

/// SQL text and the values of its parameters, in order.
#[derive(Debug, Default)]
pub(crate) struct Sql<'a> {
    text: String,
    arguments: Vec<Argument<'a>>,
}

impl<'a> Sql<'a> {
    pub(crate) fn new(text: &str) -> Sql<'a> {
        Sql {
            text: text.to_owned(),
            arguments: Vec::new(),
        }
    }

    /// The same statement with `prefix` before it (e.g. `EXPLAIN `), same parameters.
    pub(crate) fn prefixed(&self, prefix: &str) -> Sql<'a> {
        Sql {
            text: format!("{prefix}{}", self.text),
            arguments: self.arguments.clone(),
        }
    }

    /// Appends `statement` as one more statement of this text (after a `;`), its parameters
    /// renumbered after this one's. For SQLite, whose driver runs such a text's statements in
    /// turn in one round trip; PostgreSQL prepares one statement per query.
    pub(crate) fn append_statement(&mut self, statement: Sql<'a>) -> &mut Sql<'a> {
        if !self.text.is_empty() {
            self.text.push_str("; ");
        }
        let offset = self.arguments.len();
        self.text.push_str(&renumbered(&statement.text, offset));
        self.arguments.extend(statement.arguments);
        self
    }

    pub(crate) fn push(&mut self, text: &str) -> &mut Sql<'a> {
        self.text.push_str(text);
        self
    }

    /// Appends a parameter placeholder bound to `argument`.
    pub(crate) fn bind(&mut self, argument: Argument<'a>) -> &mut Sql<'a> {
        let placeholder = self.argument(argument);
        self.text.push_str(&placeholder);
        self
    }

    /// Adds a parameter without writing it, returning its placeholder (to use it several times).
    pub(crate) fn argument(&mut self, argument: Argument<'a>) -> String {
        self.arguments.push(argument);
        format!("${}", self.arguments.len())
    }

    /// Appends `(p1, p2, ...)` bound to the values; `(NULL)` when empty (`x IN (NULL)` is
    /// never true).
    pub(crate) fn bind_list(
        &mut self,
        arguments: impl IntoIterator<Item = Argument<'a>>,
    ) -> &mut Sql<'a> {
        self.text.push('(');
        if self.bind_separated(arguments) == 0 {
            self.text.push_str("NULL");
        }
        self.text.push(')');
        self
    }

    /// Appends `p1, p2, ...` bound to the values (nothing when empty); returns how many.
    pub(crate) fn bind_separated(
        &mut self,
        arguments: impl IntoIterator<Item = Argument<'a>>,
    ) -> usize {
        let mut count = 0;
        for argument in arguments {
            if count > 0 {
                self.text.push_str(", ");
            }
            count += 1;
            self.bind(argument);
        }
        count
    }

    pub(crate) fn query(&self) -> Query<'_, Any, AnyArguments<'_>> {
        let mut query = sqlx::query(&self.text);
        for argument in &self.arguments {
            query = match argument {
                Argument::Text(text) => query.bind(text.as_ref()),
                Argument::Bytes(bytes) => query.bind(bytes.as_ref()),
                Argument::NullableBytes(bytes) => query.bind(bytes.as_deref()),
                Argument::NullableText(text) => query.bind(text.as_deref()),
                Argument::Integer(integer) => query.bind(*integer),
            };
        }
        query
    }
}

/// `text` with each `$N` parameter placeholder made `$(N + offset)`. Only this builder's
/// placeholders contain `$`: values are bound, never written into the text.
fn renumbered(text: &str, offset: usize) -> String {
    if offset == 0 {
        return text.to_owned();
    }
    let mut renumbered = String::with_capacity(text.len() + text.len() / 8);
    let mut rest = text;
    while let Some(dollar) = rest.find('$') {
        renumbered.push_str(&rest[..=dollar]);
        rest = &rest[dollar + 1..];
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        match rest[..digits].parse::<usize>() {
            Ok(number) => renumbered.push_str(&(number + offset).to_string()),
            Err(_) => renumbered.push_str(&rest[..digits]),
        }
        rest = &rest[digits..];
    }
    renumbered.push_str(rest);
    renumbered
}

/// Reads column `index` of a row, naming the column in the error (never the value).
pub(crate) fn column<'r, T>(row: &'r sqlx::any::AnyRow, index: usize) -> Result<T, IndexError>
where
    T: sqlx::Decode<'r, Any> + sqlx::Type<Any>,
{
    Ok(row.try_get::<T, _>(index)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_appended_statement_numbers_its_parameters_after_the_ones_before() {
        let mut first = Sql::new("INSERT INTO a VALUES ");
        first.bind_list([Argument::Integer(1), Argument::Integer(2)]);
        let mut second = Sql::new("UPDATE b SET x = ");
        let placeholder = second.argument(Argument::Integer(3));
        second.push(&format!("{placeholder} WHERE y = {placeholder} OR z = "));
        second.bind(Argument::Integer(4));
        let mut batch = Sql::default();
        batch.append_statement(first).append_statement(second);
        assert_eq!(
            batch.text,
            "INSERT INTO a VALUES ($1, $2); UPDATE b SET x = $3 WHERE y = $3 OR z = $4"
        );
        assert_eq!(batch.arguments.len(), 4);
        // Two-digit numbers and a `$` with no number after it are kept apart.
        assert_eq!(renumbered("$1, $12, $", 9), "$10, $21, $");
    }
}
