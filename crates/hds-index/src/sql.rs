//! A small builder for SQL with numbered `$N` parameters, which SQLite and PostgreSQL both
//! accept (sqlx's `QueryBuilder` would write `?` for `Any`, which PostgreSQL refuses).

use sqlx::any::AnyArguments;
use sqlx::query::Query;
use sqlx::{Any, Row};

use crate::IndexError;

/// A bound value.
#[derive(Debug, Clone)]
pub(crate) enum Argument {
    Text(String),
    Bytes(Vec<u8>),
    /// Bytes or SQL NULL.
    NullableBytes(Option<Vec<u8>>),
    Integer(i64),
}

/// SQL text and the values of its parameters, in order.
#[derive(Debug, Default)]
pub(crate) struct Sql {
    text: String,
    arguments: Vec<Argument>,
}

impl Sql {
    pub(crate) fn new(text: &str) -> Sql {
        Sql {
            text: text.to_owned(),
            arguments: Vec::new(),
        }
    }

    pub(crate) fn push(&mut self, text: &str) -> &mut Sql {
        self.text.push_str(text);
        self
    }

    /// Appends a parameter placeholder bound to `argument`.
    pub(crate) fn bind(&mut self, argument: Argument) -> &mut Sql {
        let placeholder = self.argument(argument);
        self.text.push_str(&placeholder);
        self
    }

    /// Adds a parameter without writing it, returning its placeholder (to use it several times).
    pub(crate) fn argument(&mut self, argument: Argument) -> String {
        self.arguments.push(argument);
        format!("${}", self.arguments.len())
    }

    /// Appends `(p1, p2, ...)` bound to the values; `(NULL)` when empty (`x IN (NULL)` is
    /// never true).
    pub(crate) fn bind_list(&mut self, arguments: impl IntoIterator<Item = Argument>) -> &mut Sql {
        self.text.push('(');
        let mut first = true;
        for argument in arguments {
            if !first {
                self.text.push_str(", ");
            }
            first = false;
            self.bind(argument);
        }
        if first {
            self.text.push_str("NULL");
        }
        self.text.push(')');
        self
    }

    pub(crate) fn query(&self) -> Query<'_, Any, AnyArguments<'_>> {
        let mut query = sqlx::query(&self.text);
        for argument in &self.arguments {
            query = match argument {
                Argument::Text(text) => query.bind(text.as_str()),
                Argument::Bytes(bytes) => query.bind(bytes.as_slice()),
                Argument::NullableBytes(bytes) => query.bind(bytes.as_deref()),
                Argument::Integer(integer) => query.bind(*integer),
            };
        }
        query
    }
}

/// Reads column `index` of a row, naming the column in the error (never the value).
pub(crate) fn column<'r, T>(row: &'r sqlx::any::AnyRow, index: usize) -> Result<T, IndexError>
where
    T: sqlx::Decode<'r, Any> + sqlx::Type<Any>,
{
    Ok(row.try_get::<T, _>(index)?)
}
