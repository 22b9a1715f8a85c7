//! The bounds on a template deployment: what a template may declare, how long and how deep
//! one expression may be, and how much work and memory evaluating the whole deployment may
//! cost. A deployment past any of them answers 400 `InvalidTemplate` naming the limit.
//!
//! Why each exists: the expression evaluator recurses, so nesting must be bounded before the
//! thread's stack is (a `concat(` nested 100,000 deep would otherwise abort the process);
//! template functions can multiply sizes (a variable that doubles a string, referenced by
//! the next, reaches 2^64 bytes in 64 steps), so every value produced is paid for out of one
//! per-deployment [`Budget`], and functions whose output can outgrow their inputs check the
//! budget before they build it.

use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::Value;

use crate::error::ArmError;

/// Characters in one expression (Azure's limit).
pub(crate) const MAX_EXPRESSION_CHARS: usize = 24_576;
/// Nesting of calls, property accesses and indexes within one expression.
pub(crate) const MAX_EXPRESSION_DEPTH: usize = 32;
/// Nested evaluation frames: expression levels, JSON levels and variables that use
/// variables, all together. Sized so the deepest evaluation fits a 2 MiB thread stack in an
/// unoptimized build, with room to spare.
pub(crate) const MAX_EVALUATION_DEPTH: usize = 128;
/// Evaluation steps (one per expression node and JSON node evaluated) in one deployment.
pub(crate) const MAX_EVALUATION_STEPS: u64 = 1_000_000;
/// Bytes of values produced (strings, copies of parameters and variables, function results)
/// in one deployment.
pub(crate) const MAX_EVALUATED_BYTES: u64 = 64 * 1024 * 1024;
/// Nesting of a value produced by a template function (the stored deployment wraps values
/// a few levels deeper, and stored JSON must stay readable).
pub(crate) const MAX_VALUE_DEPTH: usize = 64;
/// Resources in a template (Azure's limit).
pub(crate) const MAX_RESOURCES: usize = 800;
/// Parameters in a template (Azure's limit).
pub(crate) const MAX_PARAMETERS: usize = 256;
/// Variables in a template (Azure's limit).
pub(crate) const MAX_VARIABLES: usize = 256;
/// Outputs in a template (Azure's limit).
pub(crate) const MAX_OUTPUTS: usize = 64;
/// Elements `range()` may make (Azure's limit).
pub(crate) const MAX_RANGE_COUNT: i64 = 10_000;

/// 400 `InvalidTemplate` naming the limit passed and its value.
pub(crate) fn exceeded(limit: &str, maximum: impl std::fmt::Display) -> ArmError {
    ArmError::invalid_template(format!(
        "The template exceeds a limit: {limit} is at most {maximum}."
    ))
}

/// What one deployment may still spend on evaluation: steps and bytes. Shared by every
/// evaluation of the deployment (validation, each resource, the outputs), so the total is
/// bounded, not each pass. Atomic only so a plan can move between threads; evaluation
/// itself is sequential.
#[derive(Debug)]
pub(crate) struct Budget {
    steps: AtomicU64,
    bytes: AtomicU64,
}

impl Default for Budget {
    fn default() -> Budget {
        Budget::new(MAX_EVALUATION_STEPS, MAX_EVALUATED_BYTES)
    }
}

impl Budget {
    /// A budget of `steps` steps and `bytes` bytes.
    pub(crate) fn new(steps: u64, bytes: u64) -> Budget {
        Budget {
            steps: AtomicU64::new(steps),
            bytes: AtomicU64::new(bytes),
        }
    }

    /// Spends one step.
    pub(crate) fn step(&self) -> Result<(), ArmError> {
        self.steps
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                left.checked_sub(1)
            })
            .map(|_| ())
            .map_err(|_| exceeded("evaluation steps", MAX_EVALUATION_STEPS))
    }

    /// Spends `bytes` of evaluated size.
    pub(crate) fn charge(&self, bytes: u64) -> Result<(), ArmError> {
        self.bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                left.checked_sub(bytes)
            })
            .map(|_| ())
            .map_err(|_| exceeded("the total evaluated size in bytes", MAX_EVALUATED_BYTES))
    }

    /// Checks, before building it, that a value of `bytes` could still be paid for.
    pub(crate) fn ensure_room(&self, bytes: u64) -> Result<(), ArmError> {
        if bytes <= self.bytes.load(Ordering::Relaxed) {
            Ok(())
        } else {
            Err(exceeded(
                "the total evaluated size in bytes",
                MAX_EVALUATED_BYTES,
            ))
        }
    }

    /// Pays for a produced value: its size, after checking its nesting.
    pub(crate) fn charge_value(&self, value: &Value) -> Result<(), ArmError> {
        self.charge(measure(value)?)
    }
}

/// The size of a value in bytes (strings and keys by their length, anything else 8), and
/// whether it nests at most [`MAX_VALUE_DEPTH`] deep, walked without recursion.
pub(crate) fn measure(value: &Value) -> Result<u64, ArmError> {
    let mut size: u64 = 0;
    let mut pending = vec![(value, 1_usize)];
    while let Some((value, depth)) = pending.pop() {
        if depth > MAX_VALUE_DEPTH {
            return Err(exceeded("the nesting depth of a value", MAX_VALUE_DEPTH));
        }
        match value {
            Value::String(text) => size = size.saturating_add(text.len() as u64),
            Value::Array(items) => {
                size = size.saturating_add(8);
                pending.extend(items.iter().map(|item| (item, depth + 1)));
            }
            Value::Object(object) => {
                size = size.saturating_add(8);
                for (key, item) in object {
                    size = size.saturating_add(key.len() as u64);
                    pending.push((item, depth + 1));
                }
            }
            _ => size = size.saturating_add(8),
        }
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn budget_runs_out_and_names_the_limit() {
        let budget = Budget::new(2, 10);
        assert!(budget.step().is_ok());
        assert!(budget.step().is_ok());
        let error = budget.step().expect_err("no steps left");
        assert!(error.message().contains("evaluation steps"), "{error}");
        assert!(budget.charge(6).is_ok());
        assert!(budget.ensure_room(4).is_ok());
        assert!(budget.ensure_room(5).is_err());
        let error = budget.charge(5).expect_err("no bytes left");
        assert_eq!(error.code(), "InvalidTemplate");
        assert!(error.message().contains("evaluated size"), "{error}");
    }

    #[test]
    fn measures_size_and_depth() {
        assert_eq!(measure(&json!("abc")).ok(), Some(3));
        assert_eq!(
            measure(&json!({"ab": [1, "x"]})).ok(),
            Some(8 + 2 + 8 + 8 + 1)
        );
        let mut deep = json!(1);
        for _ in 0..MAX_VALUE_DEPTH - 1 {
            deep = json!([deep]);
        }
        assert!(measure(&deep).is_ok());
        let too_deep = json!([deep]);
        let error = measure(&too_deep).expect_err("too deep");
        assert!(
            error.message().contains("nesting depth of a value"),
            "{error}"
        );
    }
}
