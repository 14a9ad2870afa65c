//! Huawei sends some numbers as JSON numbers in one answer and as numeric
//! strings in another (`price`, `applicationId`, `payType`): these read both.

use serde::{Deserialize, Deserializer, de::Error as _};
use serde_json::Value;

/// A string, or a number written as one; null and absent are empty.
pub(crate) fn text<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    match Value::deserialize(deserializer)? {
        Value::Null => Ok(String::new()),
        Value::String(text) => Ok(text),
        Value::Number(number) => Ok(number.to_string()),
        other => Err(D::Error::custom(format!("expected a string or a number, found {}", kind(&other)))),
    }
}

/// An integer, or a string of one; null and absent are `None`.
pub(crate) fn int<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<i64>, D::Error> {
    match Value::deserialize(deserializer)? {
        Value::Null => Ok(None),
        Value::Number(number) => {
            number.as_i64().map(Some).ok_or_else(|| D::Error::custom("expected an integer, found a fraction"))
        }
        Value::String(text) if text.is_empty() => Ok(None),
        Value::String(text) => {
            text.trim().parse().map(Some).map_err(|_| D::Error::custom("expected an integer, found another string"))
        }
        other => Err(D::Error::custom(format!("expected an integer, found {}", kind(&other)))),
    }
}

/// A boolean, or `"true"`/`"false"`; null and absent are `None`.
pub(crate) fn boolean<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<bool>, D::Error> {
    match Value::deserialize(deserializer)? {
        Value::Null => Ok(None),
        Value::Bool(value) => Ok(Some(value)),
        Value::String(text) if text == "true" => Ok(Some(true)),
        Value::String(text) if text == "false" => Ok(Some(false)),
        other => Err(D::Error::custom(format!("expected a boolean, found {}", kind(&other)))),
    }
}

/// A JSON value's kind, never its content (which can be a token).
fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    struct Sample {
        #[serde(default, deserialize_with = "super::text")]
        text: String,
        #[serde(default, deserialize_with = "super::int")]
        int: Option<i64>,
        #[serde(default, deserialize_with = "super::boolean")]
        flag: Option<bool>,
    }

    #[test]
    fn numbers_and_numeric_strings_read_alike() {
        let read = |json: &str| serde_json::from_str::<Sample>(json);
        let same = Sample { text: "101486545".into(), int: Some(501), flag: Some(true) };
        assert_eq!(read(r#"{"text": 101486545, "int": 501, "flag": true}"#).unwrap(), same);
        assert_eq!(read(r#"{"text": "101486545", "int": "501", "flag": "true"}"#).unwrap(), same);
        assert_eq!(
            read(r#"{"text": null, "int": ""}"#).unwrap(),
            Sample { text: String::new(), int: None, flag: None }
        );
        for bad in [r#"{"int": 1.5}"#, r#"{"int": "five"}"#, r#"{"text": [1]}"#, r#"{"flag": 1}"#] {
            assert!(read(bad).is_err(), "{bad}");
        }
    }
}
