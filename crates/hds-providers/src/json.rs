//! Small helpers for reading ARM request bodies, whose property names ARM matches without
//! regard to case.

use hds_arm::ArmError;
use serde_json::{Map, Value};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::errors::bad_request;

/// The value of `name` in `object`, exact spelling first, then any case.
pub(crate) fn field<'v>(object: &'v Value, name: &str) -> Option<&'v Value> {
    let object = object.as_object()?;
    object
        .get(name)
        .or_else(|| {
            object
                .iter()
                .find(|(key, _)| key.eq_ignore_ascii_case(name))
                .map(|(_, value)| value)
        })
        .filter(|value| !value.is_null())
}

/// Removes `name` (any case) from `object`.
pub(crate) fn remove_field(object: &mut Map<String, Value>, name: &str) {
    object.retain(|key, _| !key.eq_ignore_ascii_case(name));
}

/// An optional string property; another type is a 400 naming the property.
pub(crate) fn optional_string(
    object: &Value,
    name: &str,
    path: &str,
) -> Result<Option<String>, ArmError> {
    match field(object, name) {
        None => Ok(None),
        Some(Value::String(text)) => Ok(Some(text.clone())),
        Some(_) => Err(bad_request(
            "InvalidRequestContent",
            format!("'{path}' must be a string."),
        )),
    }
}

/// An optional boolean property; another type is a 400 naming the property.
pub(crate) fn optional_bool(
    object: &Value,
    name: &str,
    path: &str,
) -> Result<Option<bool>, ArmError> {
    match field(object, name) {
        None => Ok(None),
        Some(Value::Bool(flag)) => Ok(Some(*flag)),
        Some(_) => Err(bad_request(
            "InvalidRequestContent",
            format!("'{path}' must be true or false."),
        )),
    }
}

/// RFC 3339 in UTC, as ARM writes times.
pub(crate) fn format_time(time: OffsetDateTime) -> String {
    time.format(&Rfc3339).unwrap_or_default()
}

/// Unix seconds as RFC 3339.
pub(crate) fn format_unix(seconds: i64) -> String {
    OffsetDateTime::from_unix_timestamp(seconds)
        .map(format_time)
        .unwrap_or_default()
}
