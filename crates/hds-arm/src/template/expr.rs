//! The ARM template expression language: `[function('literal', 12).property[0]]`.
//!
//! A JSON string is an expression when it starts with `[` and ends with `]`; `[[` at the start
//! escapes a literal `[`. String literals use `'`, with `''` for a quote. Function names and
//! property names compare case-insensitively.
//!
//! `reference()` needs a deployed resource, which needs I/O, while evaluation here is pure.
//! So a resource is evaluated twice: first in *collect* mode, where `reference()` records its
//! target and yields `null` (and anything computed from that `null` yields `null`), which
//! gives the implicit dependencies; then, once those resources are deployed and read, in
//! *resolved* mode with their JSON at hand.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use serde_json::{Map, Number, Value};

use crate::error::ArmError;
use crate::id::ResourceId;
use crate::template::functions;
use crate::template::limits::{
    Budget, MAX_EVALUATION_DEPTH, MAX_EXPRESSION_CHARS, MAX_EXPRESSION_DEPTH, MAX_RANGE_COUNT,
    exceeded,
};

/// A parsed expression.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Expr {
    String(String),
    Integer(i64),
    Call { name: String, arguments: Vec<Expr> },
    Property(Box<Expr>, String),
    Index(Box<Expr>, Box<Expr>),
}

fn invalid(message: impl Into<String>) -> ArmError {
    ArmError::invalid_template(message)
}

/// Parses the inside of `[...]`: at most [`MAX_EXPRESSION_CHARS`] characters, nesting at most
/// [`MAX_EXPRESSION_DEPTH`] deep (checked as the parser descends, so a hostile expression
/// costs no more stack than a legal one).
pub(crate) fn parse(text: &str) -> Result<Expr, ArmError> {
    if text.len() > MAX_EXPRESSION_CHARS && text.chars().count() > MAX_EXPRESSION_CHARS {
        return Err(exceeded(
            "the length of an expression in characters",
            MAX_EXPRESSION_CHARS,
        ));
    }
    let mut parser = Parser {
        characters: text.chars().collect(),
        position: 0,
        depth: 0,
    };
    let expression = parser.expression()?;
    parser.skip_whitespace();
    if parser.position != parser.characters.len() {
        return Err(invalid(format!(
            "The template language expression '{}' is not valid: unexpected text at position {}.",
            echo(text),
            parser.position
        )));
    }
    Ok(expression)
}

/// An expression as error messages may quote it: its first 64 characters, printable.
fn echo(text: &str) -> String {
    let mut shown = crate::names::printable(text);
    if text.chars().count() > 64 {
        shown.push_str("...");
    }
    shown
}

struct Parser {
    characters: Vec<char>,
    position: usize,
    /// How many expressions enclose the one being parsed, postfix chains included.
    depth: usize,
}

impl Parser {
    fn peek(&self) -> Option<char> {
        self.characters.get(self.position).copied()
    }

    fn skip_whitespace(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.position += 1;
        }
    }

    fn error(&self, what: &str) -> ArmError {
        let text: String = self.characters.iter().take(65).collect();
        invalid(format!(
            "The template language expression '{}' is not valid: {what} at position {}.",
            echo(&text),
            self.position
        ))
    }

    /// Enters one more level of nesting, refusing to pass [`MAX_EXPRESSION_DEPTH`].
    fn descend(&mut self) -> Result<(), ArmError> {
        self.depth += 1;
        if self.depth > MAX_EXPRESSION_DEPTH {
            return Err(exceeded(
                "the nesting depth of an expression",
                MAX_EXPRESSION_DEPTH,
            ));
        }
        Ok(())
    }

    fn expect(&mut self, expected: char) -> Result<(), ArmError> {
        self.skip_whitespace();
        if self.peek() == Some(expected) {
            self.position += 1;
            Ok(())
        } else {
            Err(self.error(&format!("expected '{expected}'")))
        }
    }

    fn expression(&mut self) -> Result<Expr, ArmError> {
        let outer_depth = self.depth;
        self.descend()?;
        let result = self.expression_at_depth();
        self.depth = outer_depth;
        result
    }

    fn expression_at_depth(&mut self) -> Result<Expr, ArmError> {
        self.skip_whitespace();
        let mut expression = match self.peek() {
            Some('\'') => Expr::String(self.string_literal()?),
            Some(character) if character.is_ascii_digit() || character == '-' => self.integer()?,
            Some(character) if character.is_alphabetic() || character == '_' => {
                let name = self.identifier();
                self.expect('(')?;
                let mut arguments = Vec::new();
                self.skip_whitespace();
                if self.peek() == Some(')') {
                    self.position += 1;
                } else {
                    loop {
                        arguments.push(self.expression()?);
                        self.skip_whitespace();
                        match self.peek() {
                            Some(',') => self.position += 1,
                            Some(')') => {
                                self.position += 1;
                                break;
                            }
                            _ => return Err(self.error("expected ',' or ')'")),
                        }
                    }
                }
                Expr::Call { name, arguments }
            }
            _ => return Err(self.error("expected a function, a string or a number")),
        };
        loop {
            self.skip_whitespace();
            if matches!(self.peek(), Some('.' | '[')) {
                self.descend()?;
            }
            match self.peek() {
                Some('.') => {
                    self.position += 1;
                    self.skip_whitespace();
                    let name = self.identifier();
                    if name.is_empty() {
                        return Err(self.error("expected a property name"));
                    }
                    expression = Expr::Property(Box::new(expression), name);
                }
                Some('[') => {
                    self.position += 1;
                    let index = self.expression()?;
                    self.expect(']')?;
                    expression = Expr::Index(Box::new(expression), Box::new(index));
                }
                _ => return Ok(expression),
            }
        }
    }

    fn identifier(&mut self) -> String {
        let start = self.position;
        while self.peek().is_some_and(|character| {
            character.is_alphanumeric() || character == '_' || character == '$'
        }) {
            self.position += 1;
        }
        self.characters[start..self.position].iter().collect()
    }

    fn string_literal(&mut self) -> Result<String, ArmError> {
        self.position += 1;
        let mut text = String::new();
        loop {
            match self.peek() {
                None => return Err(self.error("unterminated string literal")),
                Some('\'') if self.characters.get(self.position + 1) == Some(&'\'') => {
                    text.push('\'');
                    self.position += 2;
                }
                Some('\'') => {
                    self.position += 1;
                    return Ok(text);
                }
                Some(character) => {
                    text.push(character);
                    self.position += 1;
                }
            }
        }
    }

    fn integer(&mut self) -> Result<Expr, ArmError> {
        let start = self.position;
        if self.peek() == Some('-') {
            self.position += 1;
        }
        while self
            .peek()
            .is_some_and(|character| character.is_ascii_digit())
        {
            self.position += 1;
        }
        let text: String = self.characters[start..self.position].iter().collect();
        text.parse()
            .map(Expr::Integer)
            .map_err(|_| self.error("invalid integer"))
    }
}

/// Facts about where a deployment runs, for `subscription()`, `resourceGroup()`,
/// `deployment()` and `resourceId()`.
#[derive(Debug, Clone)]
pub(crate) struct DeploymentScope {
    pub subscription_id: String,
    pub subscription_display_name: String,
    pub tenant_id: String,
    pub resource_group: String,
    pub resource_group_location: String,
    pub deployment_name: String,
}

impl DeploymentScope {
    pub(crate) fn resource_group_id(&self) -> ResourceId {
        ResourceId::resource_group(&self.subscription_id, &self.resource_group)
    }
}

/// How `reference()` is answered.
pub(crate) enum References<'a> {
    /// Record targets, answer `null`.
    Collect(RefCell<Vec<ResourceId>>),
    /// Answer from these full resources (by id key).
    Resolved(&'a HashMap<String, Value>),
}

/// Evaluates expressions against one deployment's parameters and variables.
pub(crate) struct Evaluator<'a> {
    pub scope: &'a DeploymentScope,
    /// Parameter values, already resolved.
    pub parameters: &'a Map<String, Value>,
    /// The template's `variables`, evaluated on first use.
    pub variables: &'a Map<String, Value>,
    /// Declared names (lowercase, as `reference('name')` may use them) to resource ids.
    pub resource_names: &'a HashMap<String, ResourceId>,
    pub references: References<'a>,
    /// What the deployment may still spend; every step and produced value is paid from it.
    budget: &'a Budget,
    /// Nested evaluation frames now open (at most [`MAX_EVALUATION_DEPTH`]).
    depth: Cell<usize>,
    variable_cache: RefCell<HashMap<String, Value>>,
    variable_stack: RefCell<Vec<String>>,
}

/// Closes an evaluation frame opened by [`Evaluator::enter`].
struct Frame<'e> {
    depth: &'e Cell<usize>,
}

impl Drop for Frame<'_> {
    fn drop(&mut self) {
        self.depth.set(self.depth.get().saturating_sub(1));
    }
}

impl<'a> Evaluator<'a> {
    pub(crate) fn new(
        scope: &'a DeploymentScope,
        parameters: &'a Map<String, Value>,
        variables: &'a Map<String, Value>,
        resource_names: &'a HashMap<String, ResourceId>,
        references: References<'a>,
        budget: &'a Budget,
    ) -> Evaluator<'a> {
        Evaluator {
            scope,
            parameters,
            variables,
            resource_names,
            references,
            budget,
            depth: Cell::new(0),
            variable_cache: RefCell::new(HashMap::new()),
            variable_stack: RefCell::new(Vec::new()),
        }
    }

    /// Opens one evaluation frame: spends a step and refuses to nest past
    /// [`MAX_EVALUATION_DEPTH`]. The frame closes when the returned guard drops.
    fn enter(&self) -> Result<Frame<'_>, ArmError> {
        self.budget.step()?;
        let depth = self.depth.get() + 1;
        if depth > MAX_EVALUATION_DEPTH {
            return Err(exceeded("the evaluation depth", MAX_EVALUATION_DEPTH));
        }
        self.depth.set(depth);
        Ok(Frame { depth: &self.depth })
    }

    fn collecting(&self) -> bool {
        matches!(self.references, References::Collect(_))
    }

    /// The `reference()` targets recorded in collect mode.
    pub(crate) fn collected(&self) -> Vec<ResourceId> {
        match &self.references {
            References::Collect(targets) => targets.borrow().clone(),
            References::Resolved(_) => Vec::new(),
        }
    }

    /// Evaluates every expression in a JSON document (object keys included).
    pub(crate) fn evaluate_json(&self, value: &Value) -> Result<Value, ArmError> {
        let _frame = self.enter()?;
        match value {
            Value::String(text) => self.evaluate_string(text),
            Value::Array(items) => items
                .iter()
                .map(|item| self.evaluate_json(item))
                .collect::<Result<Vec<_>, _>>()
                .map(Value::Array),
            Value::Object(object) => {
                let mut evaluated = Map::new();
                for (key, item) in object {
                    let key = match self.evaluate_string(key)? {
                        Value::String(key) => key,
                        Value::Null if self.collecting() => key.clone(),
                        other => to_text(&other),
                    };
                    evaluated.insert(key, self.evaluate_json(item)?);
                }
                Ok(Value::Object(evaluated))
            }
            other => Ok(other.clone()),
        }
    }

    /// Evaluates one JSON string: an expression, an escaped literal, or a plain literal.
    pub(crate) fn evaluate_string(&self, text: &str) -> Result<Value, ArmError> {
        self.budget.charge(text.len() as u64)?;
        if let Some(rest) = text.strip_prefix("[[") {
            return Ok(Value::String(format!("[{rest}")));
        }
        match expression_text(text) {
            Some(inner) => self.evaluate(&parse(inner)?),
            None => Ok(Value::String(text.to_owned())),
        }
    }

    /// Evaluates a parsed expression; whatever it produces is paid for from the budget.
    pub(crate) fn evaluate(&self, expression: &Expr) -> Result<Value, ArmError> {
        let _frame = self.enter()?;
        let value = self.evaluate_unpaid(expression)?;
        self.budget.charge_value(&value)?;
        Ok(value)
    }

    fn evaluate_unpaid(&self, expression: &Expr) -> Result<Value, ArmError> {
        match expression {
            Expr::String(text) => Ok(Value::String(text.clone())),
            Expr::Integer(number) => Ok(Value::Number((*number).into())),
            Expr::Property(target, name) => {
                let target = self.evaluate(target)?;
                self.property(&target, name)
            }
            Expr::Index(target, index) => {
                let target = self.evaluate(target)?;
                let index = self.evaluate(index)?;
                match (&target, &index) {
                    (Value::Array(items), Value::Number(number)) => number
                        .as_u64()
                        .and_then(|position| items.get(usize::try_from(position).ok()?))
                        .cloned()
                        .ok_or_else(|| invalid("The language expression index is out of bounds.")),
                    (Value::Object(_), Value::String(name)) => self.property(&target, name),
                    (Value::Null, _) if self.collecting() => Ok(Value::Null),
                    _ => Err(invalid(
                        "The language expression cannot be indexed this way.",
                    )),
                }
            }
            Expr::Call { name, arguments } => self.call(name, arguments),
        }
    }

    fn property(&self, target: &Value, name: &str) -> Result<Value, ArmError> {
        match target {
            Value::Object(object) => object
                .get(name)
                .or_else(|| {
                    object
                        .iter()
                        .find(|(key, _)| key.eq_ignore_ascii_case(name))
                        .map(|(_, value)| value)
                })
                .cloned()
                .ok_or_else(|| {
                    invalid(format!(
                        "The language expression property '{name}' doesn't exist, available properties are '{}'.",
                        object.keys().take(20).map(|key| crate::names::printable(key)).collect::<Vec<_>>().join(", ")
                    ))
                }),
            Value::Null if self.collecting() => Ok(Value::Null),
            _ => Err(invalid(format!(
                "The language expression property '{name}' can't be evaluated: the value is not an object."
            ))),
        }
    }

    fn call(&self, name: &str, arguments: &[Expr]) -> Result<Value, ArmError> {
        let lower = name.to_ascii_lowercase();
        // `if` evaluates only the branch it takes.
        if lower == "if" {
            let [condition, when_true, when_false] = arguments else {
                return Err(arity(name, "3"));
            };
            return match self.evaluate(condition)? {
                Value::Bool(true) => self.evaluate(when_true),
                Value::Bool(false) => self.evaluate(when_false),
                Value::Null if self.collecting() => {
                    self.evaluate(when_true)?;
                    self.evaluate(when_false)?;
                    Ok(Value::Null)
                }
                _ => Err(invalid("The first argument of 'if' must be a boolean.")),
            };
        }
        let values = arguments
            .iter()
            .map(|argument| self.evaluate(argument))
            .collect::<Result<Vec<_>, _>>()?;
        // `variables` recurses into the variable's own evaluation: it is answered here, not in
        // `apply`, whose large frame would otherwise sit on the stack once per variable level.
        if lower == "variables" {
            return match values.as_slice() {
                [Value::String(wanted)] => self.variable(wanted),
                [_] => Err(invalid(format!(
                    "Unable to evaluate template language function '{name}': argument 1 must be a string."
                ))),
                _ => Err(arity(name, "1")),
            };
        }
        let is_lookup = matches!(lower.as_str(), "parameters" | "reference");
        match self.apply(&lower, name, &values) {
            Err(_) if self.collecting() && !is_lookup && values.iter().any(Value::is_null) => {
                Ok(Value::Null)
            }
            result => result,
        }
    }

    fn apply(&self, lower: &str, name: &str, values: &[Value]) -> Result<Value, ArmError> {
        let text = |index: usize| -> Result<&str, ArmError> {
            values.get(index).and_then(Value::as_str).ok_or_else(|| {
                invalid(format!(
                    "Unable to evaluate template language function '{name}': argument {} must be a string.",
                    index + 1
                ))
            })
        };
        let texts = || -> Result<Vec<&str>, ArmError> { (0..values.len()).map(text).collect() };
        let exactly = |count: usize| -> Result<(), ArmError> {
            if values.len() == count {
                Ok(())
            } else {
                Err(arity(name, &count.to_string()))
            }
        };
        match lower {
            "parameters" => {
                exactly(1)?;
                let wanted = text(0)?;
                lookup(self.parameters, wanted).cloned().ok_or_else(|| {
                    invalid(format!("The template parameter '{wanted}' is not found."))
                })
            }
            "concat" => {
                if !values.is_empty() && values.iter().all(Value::is_array) {
                    Ok(Value::Array(
                        values
                            .iter()
                            .filter_map(Value::as_array)
                            .flatten()
                            .cloned()
                            .collect(),
                    ))
                } else {
                    Ok(Value::String(values.iter().map(to_text).collect()))
                }
            }
            "resourceid" => self.resource_id(name, &texts()?),
            "subscriptionresourceid" => {
                let arguments = texts()?;
                let (subscription, rest) =
                    match arguments.iter().position(|argument| argument.contains('/')) {
                        Some(1) => (arguments[0], &arguments[1..]),
                        Some(0) => (self.scope.subscription_id.as_str(), &arguments[..]),
                        _ => return Err(arity(name, "a type and names")),
                    };
                build_id(&ResourceId::subscription(subscription), rest)
            }
            "extensionresourceid" => {
                let arguments = texts()?;
                let Some((scope, rest)) = arguments.split_first() else {
                    return Err(arity(name, "at least 3"));
                };
                let scope = ResourceId::parse(scope).map_err(|_| {
                    invalid("The first argument of 'extensionResourceId' must be a resource id.")
                })?;
                build_id(&scope, rest)
            }
            "reference" => {
                if values.is_empty() || values.len() > 3 {
                    return Err(arity(name, "1 to 3"));
                }
                let target = self.reference_target(text(0)?)?;
                let full = values
                    .get(2)
                    .and_then(Value::as_str)
                    .is_some_and(|mode| mode.eq_ignore_ascii_case("full"));
                match &self.references {
                    References::Collect(targets) => {
                        targets.borrow_mut().push(target);
                        Ok(Value::Null)
                    }
                    References::Resolved(resources) => {
                        let resource = resources.get(target.key()).ok_or_else(|| {
                            invalid(format!("The resource '{target}' referenced by 'reference' is not available."))
                        })?;
                        if full {
                            Ok(resource.clone())
                        } else {
                            Ok(resource
                                .get("properties")
                                .cloned()
                                .unwrap_or(Value::Object(Map::new())))
                        }
                    }
                }
            }
            "guid" => {
                if values.is_empty() {
                    return Err(arity(name, "at least 1"));
                }
                Ok(Value::String(functions::guid(&texts()?)))
            }
            "uniquestring" => {
                if values.is_empty() {
                    return Err(arity(name, "at least 1"));
                }
                Ok(Value::String(functions::unique_string(&texts()?)))
            }
            "subscription" => {
                exactly(0)?;
                Ok(serde_json::json!({
                    "id": format!("/subscriptions/{}", self.scope.subscription_id),
                    "subscriptionId": self.scope.subscription_id,
                    "tenantId": self.scope.tenant_id,
                    "displayName": self.scope.subscription_display_name,
                }))
            }
            "resourcegroup" => {
                exactly(0)?;
                Ok(serde_json::json!({
                    "id": self.scope.resource_group_id().as_str(),
                    "name": self.scope.resource_group,
                    "type": "Microsoft.Resources/resourceGroups",
                    "location": self.scope.resource_group_location,
                    "properties": { "provisioningState": "Succeeded" },
                }))
            }
            "deployment" => {
                exactly(0)?;
                Ok(serde_json::json!({ "name": self.scope.deployment_name }))
            }
            "tolower" => {
                exactly(1)?;
                Ok(Value::String(text(0)?.to_lowercase()))
            }
            "toupper" => {
                exactly(1)?;
                Ok(Value::String(text(0)?.to_uppercase()))
            }
            "trim" => {
                exactly(1)?;
                Ok(Value::String(text(0)?.trim().to_owned()))
            }
            "replace" => {
                exactly(3)?;
                let (original, old, new) = (text(0)?, text(1)?, text(2)?);
                if old.is_empty() {
                    return Err(invalid(
                        "Unable to evaluate template language function 'replace': the text to replace is empty.",
                    ));
                }
                // The result can be far larger than the arguments: size it before building it.
                let matches = original.matches(old).count() as u64;
                let grown = (new.len() as u64).saturating_sub(old.len() as u64);
                self.budget.ensure_room(
                    (original.len() as u64).saturating_add(matches.saturating_mul(grown)),
                )?;
                Ok(Value::String(original.replace(old, new)))
            }
            "startswith" => {
                exactly(2)?;
                Ok(Value::Bool(
                    text(0)?
                        .to_lowercase()
                        .starts_with(&text(1)?.to_lowercase()),
                ))
            }
            "endswith" => {
                exactly(2)?;
                Ok(Value::Bool(
                    text(0)?.to_lowercase().ends_with(&text(1)?.to_lowercase()),
                ))
            }
            "format" => {
                let Some((template, rest)) = values.split_first() else {
                    return Err(arity(name, "at least 1"));
                };
                let template = template
                    .as_str()
                    .ok_or_else(|| invalid("The format string must be a string."))?;
                format_composite(template, rest, self.budget).map(Value::String)
            }
            "equals" => {
                exactly(2)?;
                Ok(Value::Bool(values_equal(&values[0], &values[1])))
            }
            "not" => {
                exactly(1)?;
                values[0]
                    .as_bool()
                    .map(|value| Value::Bool(!value))
                    .ok_or_else(|| invalid("The argument of 'not' must be a boolean."))
            }
            "and" | "or" => {
                if values.len() < 2 {
                    return Err(arity(name, "at least 2"));
                }
                let booleans: Option<Vec<bool>> = values.iter().map(Value::as_bool).collect();
                let booleans = booleans.ok_or_else(|| {
                    invalid(format!("The arguments of '{name}' must be booleans."))
                })?;
                Ok(Value::Bool(if lower == "and" {
                    booleans.iter().all(|value| *value)
                } else {
                    booleans.iter().any(|value| *value)
                }))
            }
            "true" => {
                exactly(0)?;
                Ok(Value::Bool(true))
            }
            "false" => {
                exactly(0)?;
                Ok(Value::Bool(false))
            }
            "null" => {
                exactly(0)?;
                Ok(Value::Null)
            }
            "empty" => {
                exactly(1)?;
                Ok(Value::Bool(match &values[0] {
                    Value::Null => true,
                    Value::String(text) => text.is_empty(),
                    Value::Array(items) => items.is_empty(),
                    Value::Object(object) => object.is_empty(),
                    _ => false,
                }))
            }
            "length" => {
                exactly(1)?;
                let length = match &values[0] {
                    Value::String(text) => text.chars().count(),
                    Value::Array(items) => items.len(),
                    Value::Object(object) => object.len(),
                    _ => {
                        return Err(invalid(
                            "The argument of 'length' must be a string, an array or an object.",
                        ));
                    }
                };
                Ok(Value::Number(Number::from(length as u64)))
            }
            "contains" => {
                exactly(2)?;
                Ok(Value::Bool(match (&values[0], &values[1]) {
                    (Value::String(text), Value::String(part)) => text.contains(part.as_str()),
                    (Value::Array(items), item) => {
                        items.iter().any(|candidate| values_equal(candidate, item))
                    }
                    (Value::Object(object), Value::String(key)) => lookup(object, key).is_some(),
                    _ => return Err(invalid("Invalid arguments to 'contains'.")),
                }))
            }
            "string" => {
                exactly(1)?;
                Ok(Value::String(to_text(&values[0])))
            }
            "int" => {
                exactly(1)?;
                match &values[0] {
                    Value::Number(number) if number.is_i64() => Ok(values[0].clone()),
                    Value::String(text) => text
                        .trim()
                        .parse::<i64>()
                        .map(|number| Value::Number(number.into()))
                        .map_err(|_| invalid("The argument of 'int' is not an integer.")),
                    _ => Err(invalid("The argument of 'int' is not an integer.")),
                }
            }
            "bool" => {
                exactly(1)?;
                match &values[0] {
                    Value::Bool(_) => Ok(values[0].clone()),
                    Value::String(text) if text.eq_ignore_ascii_case("true") => {
                        Ok(Value::Bool(true))
                    }
                    Value::String(text) if text.eq_ignore_ascii_case("false") => {
                        Ok(Value::Bool(false))
                    }
                    _ => Err(invalid("The argument of 'bool' is not a boolean.")),
                }
            }
            "json" => {
                exactly(1)?;
                serde_json::from_str(text(0)?)
                    .map_err(|_| invalid("The argument of 'json' is not valid JSON."))
            }
            "createarray" => Ok(Value::Array(values.to_vec())),
            "range" => {
                exactly(2)?;
                let integer = |index: usize| {
                    values[index].as_i64().ok_or_else(|| {
                        invalid(format!(
                            "Unable to evaluate template language function 'range': argument {} must be an integer.",
                            index + 1
                        ))
                    })
                };
                let (start, count) = (integer(0)?, integer(1)?);
                if !(0..=MAX_RANGE_COUNT).contains(&count) {
                    return Err(exceeded("the count of 'range'", MAX_RANGE_COUNT));
                }
                let end = start.checked_add(count).ok_or_else(|| {
                    invalid("Unable to evaluate template language function 'range': the end is out of range.")
                })?;
                Ok(Value::Array(
                    (start..end)
                        .map(|number| Value::Number(number.into()))
                        .collect(),
                ))
            }
            "createobject" => {
                if !values.len().is_multiple_of(2) {
                    return Err(arity(name, "an even number of"));
                }
                let mut object = Map::new();
                for pair in values.chunks_exact(2) {
                    let key = pair[0]
                        .as_str()
                        .ok_or_else(|| invalid("Object keys must be strings."))?;
                    object.insert(key.to_owned(), pair[1].clone());
                }
                Ok(Value::Object(object))
            }
            "coalesce" => Ok(values
                .iter()
                .find(|value| !value.is_null())
                .cloned()
                .unwrap_or(Value::Null)),
            _ => Err(invalid(format!(
                "The template function '{name}' is not valid. Please see https://aka.ms/arm-functions for usage details."
            ))),
        }
    }

    fn variable(&self, name: &str) -> Result<Value, ArmError> {
        let key = name.to_lowercase();
        if let Some(value) = self.variable_cache.borrow().get(&key) {
            return Ok(value.clone());
        }
        let raw = lookup(self.variables, name)
            .ok_or_else(|| invalid(format!("The template variable '{name}' is not found.")))?;
        if self.variable_stack.borrow().contains(&key) {
            return Err(invalid(format!(
                "The template variable '{name}' refers to itself."
            )));
        }
        self.variable_stack.borrow_mut().push(key.clone());
        let result = self.evaluate_json(raw);
        self.variable_stack.borrow_mut().pop();
        let value = result?;
        self.variable_cache.borrow_mut().insert(key, value.clone());
        Ok(value)
    }

    /// `resourceId([subscriptionId,] [resourceGroupName,] type, name1[, name2...])`: the
    /// first argument containing `/` is the type; a trailing `/` on it is ignored.
    fn resource_id(&self, name: &str, arguments: &[&str]) -> Result<Value, ArmError> {
        let Some(type_position) = arguments.iter().position(|argument| argument.contains('/'))
        else {
            return Err(invalid(format!(
                "Unable to evaluate template language function '{name}': no resource type argument."
            )));
        };
        let scope = match type_position {
            0 => self.scope.resource_group_id(),
            1 => ResourceId::resource_group(&self.scope.subscription_id, arguments[0]),
            2 => ResourceId::resource_group(arguments[0], arguments[1]),
            _ => return Err(arity(name, "at most 2 before the type")),
        };
        build_id(&scope, &arguments[type_position..])
    }

    fn reference_target(&self, text: &str) -> Result<ResourceId, ArmError> {
        if text.starts_with('/') {
            return ResourceId::parse(text).map_err(|_| {
                invalid(format!(
                    "The resource id '{text}' given to 'reference' is not valid."
                ))
            });
        }
        self.resource_names
            .get(&text.to_lowercase())
            .cloned()
            .ok_or_else(|| {
                invalid(format!(
                    "The resource '{text}' given to 'reference' is not defined in the template."
                ))
            })
    }
}

/// The inside of `[...]` when `text` is an expression (not a `[[` escape).
pub(crate) fn expression_text(text: &str) -> Option<&str> {
    if text.starts_with("[[") {
        return None;
    }
    text.strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
}

/// Parses every expression in `value` (strings and object keys, at any depth) without
/// evaluating it: a template with an expression that is too long, too deep or malformed is
/// refused before anything deploys, wherever the expression sits (an output is otherwise
/// evaluated only at the very end).
pub(crate) fn check_expressions(value: &Value) -> Result<(), ArmError> {
    let mut pending = vec![value];
    let check = |text: &str| -> Result<(), ArmError> {
        match expression_text(text) {
            Some(inner) => parse(inner).map(|_| ()),
            None => Ok(()),
        }
    };
    while let Some(value) = pending.pop() {
        match value {
            Value::String(text) => check(text)?,
            Value::Array(items) => pending.extend(items),
            Value::Object(object) => {
                for (key, item) in object {
                    check(key)?;
                    pending.push(item);
                }
            }
            _ => {}
        }
    }
    Ok(())
}

fn build_id(scope: &ResourceId, type_and_names: &[&str]) -> Result<Value, ArmError> {
    let Some((resource_type, names)) = type_and_names.split_first() else {
        return Err(invalid("A resource type is required."));
    };
    scope
        .with_resource(resource_type, names)
        .map(|id| Value::String(id.as_str().to_owned()))
        .ok_or_else(|| {
            invalid(format!(
                "Unable to evaluate template language function 'resourceId': the type '{resource_type}' requires one name per type segment."
            ))
        })
}

fn arity(name: &str, expected: &str) -> ArmError {
    invalid(format!(
        "Unable to evaluate template language function '{name}': it expects {expected} argument(s)."
    ))
}

/// Case-insensitive lookup of a name (parameters, variables, properties).
pub(crate) fn lookup<'v>(object: &'v Map<String, Value>, name: &str) -> Option<&'v Value> {
    object.get(name).or_else(|| {
        object
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value)
    })
}

/// How ARM writes a value into a string: strings as they are, booleans as `True`/`False`
/// (.NET), numbers in decimal, `null` as nothing, arrays and objects as JSON.
pub(crate) fn to_text(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Bool(true) => "True".to_owned(),
        Value::Bool(false) => "False".to_owned(),
        Value::Number(number) => number.to_string(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// `equals`: strings compare exactly (as ARM's `equals` does), numbers by value, the rest
/// structurally.
fn values_equal(left: &Value, right: &Value) -> bool {
    match (left, right) {
        (Value::Number(left), Value::Number(right)) => left.as_f64() == right.as_f64(),
        _ => left == right,
    }
}

/// .NET composite formatting: `{0}`, `{1}`, `{{` and `}}`. A format specifier after `:`
/// (`{0:N2}`) is accepted and ignored: values are written as [`to_text`] writes them.
/// The output is sized against `budget` as it grows, since one placeholder may repeat a
/// large argument many times.
fn format_composite(
    template: &str,
    arguments: &[Value],
    budget: &Budget,
) -> Result<String, ArmError> {
    let mut output = String::new();
    let mut characters = template.chars().peekable();
    while let Some(character) = characters.next() {
        match character {
            '{' if characters.peek() == Some(&'{') => {
                characters.next();
                output.push('{');
            }
            '}' if characters.peek() == Some(&'}') => {
                characters.next();
                output.push('}');
            }
            '{' => {
                let mut placeholder = String::new();
                loop {
                    match characters.next() {
                        Some('}') => break,
                        Some(inner) => placeholder.push(inner),
                        None => {
                            return Err(invalid(
                                "The format string has an unterminated placeholder.",
                            ));
                        }
                    }
                }
                let index_text = placeholder
                    .split([':', ','])
                    .next()
                    .unwrap_or_default()
                    .trim();
                let value = index_text
                    .parse::<usize>()
                    .ok()
                    .and_then(|index| arguments.get(index))
                    .ok_or_else(|| invalid("The format string refers to a missing argument."))?;
                let text = to_text(value);
                budget.ensure_room((output.len() + text.len()) as u64)?;
                output.push_str(&text);
            }
            '}' => return Err(invalid("The format string has an unmatched '}'.")),
            other => output.push(other),
        }
    }
    Ok(output)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn scope() -> DeploymentScope {
        DeploymentScope {
            subscription_id: "sub1".into(),
            subscription_display_name: "Subscription One".into(),
            tenant_id: "tenant1".into(),
            resource_group: "rg1".into(),
            resource_group_location: "westus3".into(),
            deployment_name: "deploy1".into(),
        }
    }

    /// Runs `run` with an evaluator over these parameters and variables, no resources, and
    /// `budget`.
    fn with_evaluator<T>(
        parameters: Value,
        variables: Value,
        budget: Budget,
        run: impl FnOnce(&Evaluator<'_>) -> T,
    ) -> T {
        let scope = scope();
        let parameters = parameters.as_object().cloned().unwrap_or_default();
        let variables = variables.as_object().cloned().unwrap_or_default();
        let names = HashMap::new();
        let resolved = HashMap::new();
        let evaluator = Evaluator::new(
            &scope,
            &parameters,
            &variables,
            &names,
            References::Resolved(&resolved),
            &budget,
        );
        run(&evaluator)
    }

    fn evaluate_with(text: &str, parameters: Value, variables: Value) -> Result<Value, ArmError> {
        with_evaluator(parameters, variables, Budget::default(), |evaluator| {
            evaluator.evaluate_string(text)
        })
    }

    fn evaluate(text: &str) -> Value {
        match evaluate_with(
            text,
            json!({"name": "kv1", "Count": 3, "flag": true}),
            json!({"prefix": "[concat('p-', parameters('name'))]", "loop": "[variables('loop')]"}),
        ) {
            Ok(value) => value,
            Err(error) => panic!("{text}: {error}"),
        }
    }

    #[test]
    fn literals_and_escapes() {
        assert_eq!(evaluate("plain"), json!("plain"));
        assert_eq!(
            evaluate("[[not an expression]"),
            json!("[not an expression]")
        );
        assert_eq!(evaluate("['it''s']"), json!("it's"));
        assert_eq!(evaluate("[ concat( 'a' , 'b' ) ]"), json!("ab"));
        assert_eq!(evaluate("[-5]"), json!(-5));
    }

    #[test]
    fn parameters_and_variables() {
        assert_eq!(evaluate("[parameters('NAME')]"), json!("kv1"));
        assert_eq!(evaluate("[parameters('count')]"), json!(3));
        assert_eq!(evaluate("[variables('prefix')]"), json!("p-kv1"));
        let missing = evaluate_with("[parameters('nope')]", json!({}), json!({}));
        assert!(matches!(missing, Err(error) if error.code() == "InvalidTemplate"));
        let cycle = evaluate_with(
            "[variables('loop')]",
            json!({}),
            json!({"loop": "[variables('loop')]"}),
        );
        assert!(matches!(cycle, Err(error) if error.message().contains("refers to itself")));
    }

    #[test]
    fn string_functions() {
        assert_eq!(
            evaluate("[concat(parameters('name'), '/', 'k', 1, true())]"),
            json!("kv1/k1True")
        );
        assert_eq!(
            evaluate("[concat(createArray(1), createArray(2, 3))]"),
            json!([1, 2, 3])
        );
        assert_eq!(evaluate("[toLower('AbC')]"), json!("abc"));
        assert_eq!(evaluate("[toUpper('AbC')]"), json!("ABC"));
        assert_eq!(
            evaluate("[format('{0}-{1}{{x}}', 'a', 2)]"),
            json!("a-2{x}")
        );
        assert_eq!(evaluate("[format('{0:N0}', 7)]"), json!("7"));
        assert_eq!(evaluate("[replace('a.b', '.', '-')]"), json!("a-b"));
        assert_eq!(evaluate("[length('abc')]"), json!(3));
        assert_eq!(evaluate("[string(12)]"), json!("12"));
        assert_eq!(evaluate("[int('12')]"), json!(12));
        assert_eq!(evaluate("[json('{\"a\":1}').a]"), json!(1));
        assert_eq!(evaluate("[createObject('k', 'v')]"), json!({"k": "v"}));
        assert_eq!(evaluate("[startsWith('Hello', 'he')]"), json!(true));
    }

    #[test]
    fn logic_functions() {
        assert_eq!(evaluate("[equals('a', 'a')]"), json!(true));
        assert_eq!(evaluate("[equals('a', 'A')]"), json!(false));
        assert_eq!(evaluate("[equals(1, 1)]"), json!(true));
        assert_eq!(evaluate("[if(equals(1, 2), 'yes', 'no')]"), json!("no"));
        // Only the branch taken is evaluated.
        assert_eq!(
            evaluate("[if(true(), 'ok', parameters('missing'))]"),
            json!("ok")
        );
        assert_eq!(evaluate("[not(parameters('flag'))]"), json!(false));
        assert_eq!(evaluate("[and(true(), false())]"), json!(false));
        assert_eq!(evaluate("[or(true(), false())]"), json!(true));
        assert_eq!(evaluate("[empty('')]"), json!(true));
        assert_eq!(evaluate("[contains(createArray('a'), 'a')]"), json!(true));
        assert_eq!(evaluate("[coalesce(null(), 'x')]"), json!("x"));
    }

    #[test]
    fn scope_functions() {
        assert_eq!(evaluate("[subscription().subscriptionId]"), json!("sub1"));
        assert_eq!(evaluate("[subscription().tenantId]"), json!("tenant1"));
        assert_eq!(evaluate("[resourceGroup().name]"), json!("rg1"));
        assert_eq!(
            evaluate("[resourceGroup().id]"),
            json!("/subscriptions/sub1/resourceGroups/rg1")
        );
        assert_eq!(evaluate("[resourceGroup().location]"), json!("westus3"));
        assert_eq!(evaluate("[resourceGroup()['name']]"), json!("rg1"));
        assert_eq!(evaluate("[deployment().name]"), json!("deploy1"));
    }

    #[test]
    fn resource_ids() {
        assert_eq!(
            evaluate("[resourceId('Microsoft.KeyVault/vaults/', parameters('name'))]"),
            json!("/subscriptions/sub1/resourceGroups/rg1/providers/Microsoft.KeyVault/vaults/kv1")
        );
        assert_eq!(
            evaluate("[resourceId('Microsoft.KeyVault/vaults/keys', 'v', 'k')]"),
            json!(
                "/subscriptions/sub1/resourceGroups/rg1/providers/Microsoft.KeyVault/vaults/v/keys/k"
            )
        );
        assert_eq!(
            evaluate("[resourceId('other', 'Microsoft.KeyVault/vaults', 'v')]"),
            json!("/subscriptions/sub1/resourceGroups/other/providers/Microsoft.KeyVault/vaults/v")
        );
        assert_eq!(
            evaluate("[resourceId('s2', 'other', 'Microsoft.KeyVault/vaults', 'v')]"),
            json!("/subscriptions/s2/resourceGroups/other/providers/Microsoft.KeyVault/vaults/v")
        );
        assert_eq!(
            evaluate("[subscriptionResourceId('Microsoft.Authorization/roleDefinitions', 'r')]"),
            json!("/subscriptions/sub1/providers/Microsoft.Authorization/roleDefinitions/r")
        );
        assert_eq!(
            evaluate(
                "[extensionResourceId(resourceId('NS/t', 'n'), 'Microsoft.Authorization/roleAssignments', 'g')]"
            ),
            json!(
                "/subscriptions/sub1/resourceGroups/rg1/providers/NS/t/n/providers/Microsoft.Authorization/roleAssignments/g"
            )
        );
        let wrong = evaluate_with(
            "[resourceId('Microsoft.KeyVault/vaults/keys', 'v')]",
            json!({}),
            json!({}),
        );
        assert!(matches!(wrong, Err(error) if error.code() == "InvalidTemplate"));
    }

    #[test]
    fn hashes() {
        assert_eq!(
            evaluate("[guid('a', 'b', 'c')]"),
            json!(functions::guid(&["a-b-c"]))
        );
        assert_eq!(
            evaluate("[uniqueString('x')]"),
            json!(functions::unique_string(&["x"]))
        );
    }

    #[test]
    fn references_collect_then_resolve() {
        let scope = scope();
        let budget = Budget::default();
        let parameters = Map::new();
        let variables = Map::new();
        let mut names = HashMap::new();
        let identity = ResourceId::parse("/subscriptions/sub1/resourceGroups/rg1/providers/Microsoft.ManagedIdentity/userAssignedIdentities/id1").expect("valid id");
        names.insert("id1".to_owned(), identity.clone());
        let expression = "[reference(resourceId('Microsoft.ManagedIdentity/userAssignedIdentities', 'id1')).principalId]";
        let collector = Evaluator::new(
            &scope,
            &parameters,
            &variables,
            &names,
            References::Collect(RefCell::new(Vec::new())),
            &budget,
        );
        assert_eq!(
            collector.evaluate_string(expression).ok(),
            Some(Value::Null)
        );
        assert!(
            collector
                .evaluate_string("[concat('x', reference('id1').principalId)]")
                .is_ok()
        );
        assert_eq!(
            collector.collected(),
            vec![identity.clone(), identity.clone()]
        );

        let mut resolved = HashMap::new();
        resolved.insert(
            identity.key().to_owned(),
            json!({"id": identity.as_str(), "properties": {"principalId": "p-1"}}),
        );
        let resolver = Evaluator::new(
            &scope,
            &parameters,
            &variables,
            &names,
            References::Resolved(&resolved),
            &budget,
        );
        assert_eq!(
            resolver.evaluate_string(expression).ok(),
            Some(json!("p-1"))
        );
        assert_eq!(
            resolver
                .evaluate_string("[reference('id1', '2023-01-31', 'Full').id]")
                .ok(),
            Some(json!(identity.as_str()))
        );
        let missing = resolver.evaluate_string("[reference('id1').nothing]");
        assert!(
            matches!(missing, Err(error) if error.message().contains("available properties are 'principalId'"))
        );
    }

    #[test]
    fn evaluates_keys_and_rejects_bad_syntax() {
        with_evaluator(
            json!({"n": "id1"}),
            json!({}),
            Budget::default(),
            |evaluator| {
                let value = evaluator
                    .evaluate_json(
                        &json!({"[parameters('n')]": {}, "list": ["[parameters('n')]", 1]}),
                    )
                    .expect("evaluates");
                assert_eq!(value, json!({"id1": {}, "list": ["id1", 1]}));
                for bad in [
                    "[concat('a']",
                    "[unknownFunction()]",
                    "['unterminated]",
                    "[parameters]",
                ] {
                    assert!(evaluator.evaluate_string(bad).is_err(), "{bad} should fail");
                }
            },
        );
    }

    fn limit_error(result: Result<Value, ArmError>, limit: &str) {
        match result {
            Err(error) => {
                assert_eq!(error.code(), "InvalidTemplate");
                assert!(
                    error.message().contains(limit),
                    "expected the limit '{limit}' in: {error}"
                );
            }
            Ok(value) => panic!(
                "expected the limit '{limit}', got a value of {} bytes",
                value.to_string().len()
            ),
        }
    }

    #[test]
    fn concat_nested_100000_deep_is_refused_without_overflowing_the_stack() {
        let deep = format!("[{}'x'{}]", "concat(".repeat(100_000), ")".repeat(100_000));
        limit_error(
            evaluate_with(&deep, json!({}), json!({})),
            "length of an expression",
        );
        // Short enough to pass the length limit, too deep to parse.
        let depth = MAX_EXPRESSION_CHARS / "concat()".len() - 10;
        let deep = format!("[{}'x'{}]", "concat(".repeat(depth), ")".repeat(depth));
        limit_error(
            evaluate_with(&deep, json!({}), json!({})),
            "nesting depth of an expression",
        );
    }

    #[test]
    fn expression_nesting_is_allowed_up_to_the_limit() {
        let nested =
            |depth: usize| format!("[{}'x'{}]", "concat(".repeat(depth), ")".repeat(depth));
        // The string literal is one level, each `concat(` another.
        assert_eq!(
            evaluate_with(&nested(MAX_EXPRESSION_DEPTH - 1), json!({}), json!({})).ok(),
            Some(json!("x"))
        );
        limit_error(
            evaluate_with(&nested(MAX_EXPRESSION_DEPTH), json!({}), json!({})),
            "nesting depth of an expression",
        );
        // A chain of property accesses nests as deeply as calls do.
        let chain = format!("[createObject(){}]", ".a".repeat(MAX_EXPRESSION_DEPTH + 1));
        limit_error(
            evaluate_with(&chain, json!({}), json!({})),
            "nesting depth of an expression",
        );
        let long = format!("['{}']", "a".repeat(MAX_EXPRESSION_CHARS));
        limit_error(
            evaluate_with(&long, json!({}), json!({})),
            "length of an expression",
        );
        let longest = format!("['{}']", "a".repeat(MAX_EXPRESSION_CHARS - 2));
        assert!(evaluate_with(&longest, json!({}), json!({})).is_ok());
    }

    #[test]
    fn variables_that_use_variables_stop_at_the_evaluation_depth() {
        // v0 uses v1 uses v2 ...: each link nests evaluation once more, through the evaluator's
        // deepest frames. The chain longer than the limit is refused; running it is also the
        // proof that the deepest allowed evaluation fits this test thread's 2 MiB stack.
        let mut variables = serde_json::Map::new();
        for index in 0..MAX_EVALUATION_DEPTH {
            variables.insert(
                format!("v{index}"),
                json!(format!(
                    "[concat(createArray(variables('v{}')))]",
                    index + 1
                )),
            );
        }
        variables.insert(format!("v{MAX_EVALUATION_DEPTH}"), json!(["end"]));
        limit_error(
            evaluate_with(
                "[variables('v0')]",
                json!({}),
                Value::Object(variables.clone()),
            ),
            "evaluation depth",
        );
        let shallow = MAX_EVALUATION_DEPTH / 8;
        assert!(
            evaluate_with(
                &format!("[variables('v{}')]", MAX_EVALUATION_DEPTH - shallow),
                json!({}),
                Value::Object(variables)
            )
            .is_ok()
        );
    }

    /// Variables `d1..=levels`, each `concat` of `copies` of the one before; `d0` is 16 bytes.
    fn doubling(levels: usize, copies: usize) -> Value {
        let mut variables = serde_json::Map::new();
        variables.insert("d0".to_owned(), json!("0123456789abcdef"));
        for index in 1..=levels {
            let previous = format!("variables('d{}')", index - 1);
            variables.insert(
                format!("d{index}"),
                json!(format!("[concat({})]", vec![previous; copies].join(", "))),
            );
        }
        Value::Object(variables)
    }

    #[test]
    fn doubling_a_string_64_times_is_refused_quickly() {
        let started = std::time::Instant::now();
        // Doubling 64 times, one variable per doubling: the chain is deeper than evaluation
        // may nest.
        limit_error(
            evaluate_with("[length(variables('d64'))]", json!({}), doubling(64, 2)),
            "evaluation depth",
        );
        // The same 2^64 growth in 16 levels of 16 copies: the evaluated size runs out.
        limit_error(
            evaluate_with("[length(variables('d16'))]", json!({}), doubling(16, 16)),
            "evaluated size",
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(20));
        assert_eq!(
            evaluate_with("[length(variables('d10'))]", json!({}), doubling(10, 2)).ok(),
            Some(json!(16 * 1024))
        );
    }

    #[test]
    fn functions_that_multiply_sizes_are_sized_before_they_build() {
        let big = "a".repeat(20_000);
        let parameters = json!({ "big": big });
        // 20,000 matches each replaced by 20,000 characters: 400 MB, refused before building.
        limit_error(
            evaluate_with(
                "[replace(parameters('big'), 'a', parameters('big'))]",
                parameters.clone(),
                json!({}),
            ),
            "evaluated size",
        );
        let placeholders = "{0}".repeat(8_000);
        limit_error(
            evaluate_with(
                &format!("[format('{placeholders}', parameters('big'))]"),
                parameters.clone(),
                json!({}),
            ),
            "evaluated size",
        );
        assert_eq!(
            evaluate_with("[replace('a.b.c', '.', '--')]", json!({}), json!({})).ok(),
            Some(json!("a--b--c"))
        );
        assert!(evaluate_with("[replace('abc', '', 'x')]", json!({}), json!({})).is_err());
    }

    #[test]
    fn range_is_capped() {
        assert_eq!(evaluate("[range(2, 3)]"), json!([2, 3, 4]));
        assert_eq!(evaluate("[length(range(0, 10000))]"), json!(10000));
        limit_error(
            evaluate_with("[range(0, 10001)]", json!({}), json!({})),
            "count of 'range'",
        );
        limit_error(
            evaluate_with("[range(0, 2147483647)]", json!({}), json!({})),
            "count of 'range'",
        );
        assert!(evaluate_with("[range(9223372036854775807, 2)]", json!({}), json!({})).is_err());
        assert!(evaluate_with("[range(0, -1)]", json!({}), json!({})).is_err());
    }

    #[test]
    fn steps_are_bounded() {
        let many = format!("[createArray({})]", vec!["1"; 100].join(", "));
        let result = with_evaluator(
            json!({}),
            json!({}),
            Budget::new(50, 1 << 20),
            |evaluator| evaluator.evaluate_string(&many),
        );
        limit_error(result, "evaluation steps");
    }

    #[test]
    fn every_expression_of_a_template_is_checked_before_evaluation() {
        let deep = format!("[{}'x'{}]", "concat(".repeat(40), ")".repeat(40));
        let template = json!({"outputs": {"o": {"type": "string", "value": deep}}});
        let error = check_expressions(&template).expect_err("too deep");
        assert!(error.message().contains("nesting depth"), "{error}");
        let as_key = json!({"resources": [{"properties": {"[concat('a']": 1}}]});
        assert!(check_expressions(&as_key).is_err());
        let fine =
            json!({"a": ["[concat('a', 'b')]", "[[literal", "plain", {"[parameters('x')]": 1}]});
        assert!(check_expressions(&fine).is_ok());
    }
}
