//! What client commands print, as `az` prints it: JSON by default, `--output table` or `tsv`
//! for people and shell loops, and `--query` (JMESPath) to pick fields before either.

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use serde_json::Value;

/// The longest `--query` expression accepted.
const MAX_QUERY_LEN: usize = 4096;

/// The output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Indented JSON.
    Json,
    /// JSON on one line.
    Jsonc,
    /// Columns with a header, one row per object.
    Table,
    /// Tab-separated values, no header: for `while read` loops.
    Tsv,
    /// Nothing.
    None,
}

/// `--output` and `--query`, taken by every client command that prints a result.
#[derive(Debug, Clone, Args)]
pub struct OutputOptions {
    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = Format::Json)]
    pub output: Format,
    /// A JMESPath query applied to the result before it is printed, e.g. "[].StudyInstanceUID".
    #[arg(long)]
    pub query: Option<String>,
}

impl OutputOptions {
    /// Checks the query before any request is sent, so a typo costs nothing.
    pub fn validate(&self) -> anyhow::Result<()> {
        if let Some(query) = &self.query {
            compile(query)?;
        }
        Ok(())
    }

    /// Prints `value` after the query, in the chosen format.
    pub fn print(&self, value: &Value) -> anyhow::Result<()> {
        let text = self.render(value)?;
        if !text.is_empty() {
            println!("{text}");
        }
        Ok(())
    }

    /// The text `print` writes (without the final newline).
    pub fn render(&self, value: &Value) -> anyhow::Result<String> {
        let queried = match &self.query {
            Some(query) => {
                let expression = compile(query)?;
                let result = expression
                    .search(value)
                    .map_err(|error| anyhow::anyhow!("--query: {error}"))?;
                serde_json::to_value(&*result).context("--query's result")?
            }
            None => value.clone(),
        };
        Ok(match self.output {
            Format::Json => serde_json::to_string_pretty(&queried)?,
            Format::Jsonc => serde_json::to_string(&queried)?,
            Format::Table => table(&queried),
            Format::Tsv => tsv(&queried),
            Format::None => String::new(),
        })
    }
}

fn compile(query: &str) -> anyhow::Result<jmespath::Expression<'static>> {
    if query.len() > MAX_QUERY_LEN {
        bail!("--query is longer than {MAX_QUERY_LEN} characters");
    }
    jmespath::compile(query).map_err(|error| anyhow::anyhow!("--query is not JMESPath: {error}"))
}

/// A scalar as a cell: strings bare, null empty, others as JSON.
fn cell(value: &Value) -> Option<String> {
    match value {
        Value::Null => Some(String::new()),
        Value::String(text) => Some(text.clone()),
        Value::Bool(_) | Value::Number(_) => Some(value.to_string()),
        Value::Array(_) | Value::Object(_) => None,
    }
}

/// The rows of a result: an array's items, or the value itself.
fn rows(value: &Value) -> Vec<&Value> {
    match value {
        Value::Array(items) => items.iter().collect(),
        Value::Null => Vec::new(),
        other => vec![other],
    }
}

/// The columns of a table: the scalar fields of the rows, in name order (JSON objects keep no
/// order of their own here, so a query's field order cannot be relied on). Like az, nested
/// objects and lists are left out; pick them with --query.
fn columns(rows: &[&Value]) -> Vec<String> {
    let mut columns: Vec<String> = Vec::new();
    for row in rows {
        if let Value::Object(map) = row {
            for (key, field) in map {
                if cell(field).is_some() && !columns.contains(key) {
                    columns.push(key.clone());
                }
            }
        }
    }
    columns.sort();
    columns
}

/// The cells of one row.
fn row_cells(row: &Value, columns: &[String]) -> Vec<String> {
    match row {
        Value::Object(map) => columns
            .iter()
            .map(|column| map.get(column).and_then(cell).unwrap_or_default())
            .collect(),
        Value::Array(items) => items
            .iter()
            .map(|item| cell(item).unwrap_or_else(|| item.to_string()))
            .collect(),
        scalar => vec![cell(scalar).unwrap_or_default()],
    }
}

/// Tabs and newlines inside a cell would break a TSV row: they become spaces.
fn flat(text: &str) -> String {
    text.replace(['\t', '\n', '\r'], " ")
}

fn tsv(value: &Value) -> String {
    let rows = rows(value);
    let columns = columns(&rows);
    rows.iter()
        .map(|row| {
            row_cells(row, &columns)
                .iter()
                .map(|text| flat(text))
                .collect::<Vec<_>>()
                .join("\t")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn table(value: &Value) -> String {
    let rows = rows(value);
    let columns = columns(&rows);
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            row_cells(row, &columns)
                .iter()
                .map(|text| flat(text))
                .collect()
        })
        .collect();
    let header: Vec<String> = if columns.is_empty() {
        // Rows of scalars or lists: az heads them "Result" / "Column1..".
        let width = body.iter().map(Vec::len).max().unwrap_or(0);
        if width <= 1 {
            vec!["Result".to_owned()]
        } else {
            (1..=width).map(|index| format!("Column{index}")).collect()
        }
    } else {
        columns.clone()
    };
    let mut widths: Vec<usize> = header.iter().map(|name| name.chars().count()).collect();
    for row in &body {
        for (index, text) in row.iter().enumerate() {
            if let Some(width) = widths.get_mut(index) {
                *width = (*width).max(text.chars().count());
            }
        }
    }
    let line = |cells: &[String]| -> String {
        cells
            .iter()
            .zip(&widths)
            .map(|(text, width)| format!("{text:<width$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    let mut lines = vec![line(&header)];
    lines.push(line(
        &widths
            .iter()
            .map(|width| "-".repeat(*width))
            .collect::<Vec<_>>(),
    ));
    lines.extend(body.iter().map(|row| line(row)));
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn options(output: Format, query: Option<&str>) -> OutputOptions {
        OutputOptions {
            output,
            query: query.map(str::to_owned),
        }
    }

    #[test]
    fn query_then_format() {
        let value = json!([
            {"StudyInstanceUID": "1.2.3", "PatientName": "Doe^J", "ModalitiesInStudy": ["CT"]},
            {"StudyInstanceUID": "1.2.4", "PatientName": "Roe\tR", "NumberOfStudyRelatedInstances": 2},
        ]);
        let table = options(Format::Table, None).render(&value).expect("table");
        let expected = [
            "NumberOfStudyRelatedInstances  PatientName  StudyInstanceUID",
            "-----------------------------  -----------  ----------------",
            "                               Doe^J        1.2.3",
            "2                              Roe R        1.2.4",
        ];
        assert_eq!(table, expected.join("\n"));
        let tsv = options(Format::Tsv, Some("[].[StudyInstanceUID, PatientName]"))
            .render(&value)
            .expect("tsv");
        assert_eq!(tsv, "1.2.3\tDoe^J\n1.2.4\tRoe R");
        let json = options(Format::Json, Some("length(@)"))
            .render(&value)
            .expect("json");
        assert_eq!(json, "2");
        let scalars = options(Format::Table, Some("[].StudyInstanceUID"))
            .render(&value)
            .expect("scalars");
        assert_eq!(scalars, "Result\n------\n1.2.3\n1.2.4");
    }

    #[test]
    fn a_bad_or_huge_query_is_refused_with_a_reason() {
        let error = options(Format::Json, Some("[?"))
            .validate()
            .expect_err("bad query");
        assert!(error.to_string().contains("not JMESPath"), "{error}");
        let huge = "a".repeat(MAX_QUERY_LEN + 1);
        let error = options(Format::Json, Some(&huge))
            .validate()
            .expect_err("huge query");
        assert!(error.to_string().contains("longer than"), "{error}");
    }
}
