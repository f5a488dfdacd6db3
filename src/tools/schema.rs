//! Checks a model's tool arguments against the tool's JSON Schema before the call is made, so
//! an invalid call is answered with what was wrong instead of reaching a backend that books or
//! pays. Pure. The subset tool schemas use: `type` (one or a list), `properties`, `required`,
//! `additionalProperties: false`, `enum`, `const`, `minimum`/`maximum` (and their exclusive
//! forms), `minLength`/`maxLength`, `items`, `minItems`/`maxItems`. Other keywords are not
//! checked (the backend still sees the call); the first problem found is reported, with the
//! path of the value at fault.

use serde_json::Value;

/// What is wrong with `value` under `schema`, with `path` naming it (`arguments.people`);
/// `None` when it conforms.
pub fn violation(value: &Value, schema: &Value, path: &str) -> Option<String> {
    let schema = schema.as_object()?;
    if let Some(expected) = schema.get("type") {
        let types: Vec<&str> = match expected {
            Value::String(t) => vec![t.as_str()],
            Value::Array(list) => list.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        if !types.is_empty() && !types.iter().any(|t| is_type(value, t)) {
            return Some(format!(
                "{path}: expected {}, got {}",
                types.join(" or "),
                describe(value)
            ));
        }
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(value)
    {
        let listed: Vec<String> = allowed.iter().map(Value::to_string).collect();
        return Some(format!(
            "{path}: {} is not one of {}",
            describe(value),
            listed.join(", ")
        ));
    }
    if let Some(constant) = schema.get("const")
        && constant != value
    {
        return Some(format!("{path}: must be {constant}"));
    }
    match value {
        Value::Number(n) => {
            let n = n.as_f64().unwrap_or(f64::NAN);
            let bound = |key: &str| schema.get(key).and_then(Value::as_f64);
            if let Some(min) = bound("minimum")
                && n < min
            {
                return Some(format!("{path}: {n} is below the minimum {min}"));
            }
            if let Some(max) = bound("maximum")
                && n > max
            {
                return Some(format!("{path}: {n} is above the maximum {max}"));
            }
            if let Some(min) = bound("exclusiveMinimum")
                && n <= min
            {
                return Some(format!("{path}: {n} must be above {min}"));
            }
            if let Some(max) = bound("exclusiveMaximum")
                && n >= max
            {
                return Some(format!("{path}: {n} must be below {max}"));
            }
        }
        Value::String(s) => {
            let length = s.chars().count() as u64;
            if let Some(min) = schema.get("minLength").and_then(Value::as_u64)
                && length < min
            {
                return Some(format!("{path}: shorter than {min} characters"));
            }
            if let Some(max) = schema.get("maxLength").and_then(Value::as_u64)
                && length > max
            {
                return Some(format!("{path}: longer than {max} characters"));
            }
        }
        Value::Array(items) => {
            let count = items.len() as u64;
            if let Some(min) = schema.get("minItems").and_then(Value::as_u64)
                && count < min
            {
                return Some(format!("{path}: fewer than {min} items"));
            }
            if let Some(max) = schema.get("maxItems").and_then(Value::as_u64)
                && count > max
            {
                return Some(format!("{path}: more than {max} items"));
            }
            if let Some(item) = schema.get("items") {
                for (i, v) in items.iter().enumerate() {
                    if let Some(problem) = violation(v, item, &format!("{path}[{i}]")) {
                        return Some(problem);
                    }
                }
            }
        }
        Value::Object(fields) => {
            for name in schema
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                if !fields.contains_key(name) {
                    return Some(format!("{path}.{name}: required but missing"));
                }
            }
            let properties = schema.get("properties").and_then(Value::as_object);
            for (name, v) in fields {
                match properties.and_then(|p| p.get(name)) {
                    Some(property) => {
                        if let Some(problem) = violation(v, property, &format!("{path}.{name}")) {
                            return Some(problem);
                        }
                    }
                    None if schema.get("additionalProperties") == Some(&Value::Bool(false)) => {
                        let known: Vec<&str> = properties
                            .map(|p| p.keys().map(String::as_str).collect())
                            .unwrap_or_default();
                        return Some(format!(
                            "{path}.{name}: not a parameter of this tool (it takes {})",
                            if known.is_empty() {
                                "none".to_owned()
                            } else {
                                known.join(", ")
                            }
                        ));
                    }
                    None => {}
                }
            }
        }
        _ => {}
    }
    None
}

fn is_type(value: &Value, name: &str) -> bool {
    match name {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "boolean" => value.is_boolean(),
        "null" => value.is_null(),
        "number" => value.is_number(),
        "integer" => {
            value.is_i64() || value.is_u64() || value.as_f64().is_some_and(|f| f.fract() == 0.0)
        }
        // An unknown type name is not ours to refuse.
        _ => true,
    }
}

fn describe(value: &Value) -> String {
    let text = value.to_string();
    let short: String = text.chars().take(40).collect();
    let shown = if short.len() < text.len() {
        format!("{short}...")
    } else {
        short
    };
    let kind = match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    };
    format!("{kind} ({shown})")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn booking() -> Value {
        json!({
            "type": "object",
            "properties": {
                "people": {"type": "integer", "minimum": 1, "maximum": 12},
                "time": {"type": "string", "minLength": 4},
                "seating": {"enum": ["inside", "terrace"]},
                "notes": {"type": ["string", "null"]},
                "guests": {"type": "array", "items": {"type": "string"}, "maxItems": 2}
            },
            "required": ["people", "time"],
            "additionalProperties": false
        })
    }

    fn check(arguments: Value) -> Option<String> {
        violation(&arguments, &booking(), "arguments")
    }

    #[test]
    fn a_valid_call_passes() {
        assert_eq!(check(json!({"people": 4, "time": "19:00"})), None);
        assert_eq!(
            check(
                json!({"people": 4.0, "time": "19:00", "seating": "terrace", "notes": null, "guests": ["Ana"]})
            ),
            None
        );
    }

    #[test]
    fn each_problem_names_its_path_and_what_is_allowed() {
        let cases = [
            (
                json!({"time": "19:00"}),
                "arguments.people: required but missing",
            ),
            (
                json!({"people": "four", "time": "19:00"}),
                "arguments.people: expected integer, got a string (\"four\")",
            ),
            (
                json!({"people": 40, "time": "19:00"}),
                "arguments.people: 40 is above the maximum 12",
            ),
            (
                json!({"people": 2, "time": "7"}),
                "arguments.time: shorter than 4 characters",
            ),
            (
                json!({"people": 2, "time": "19:00", "seating": "roof"}),
                "arguments.seating: a string (\"roof\") is not one of \"inside\", \"terrace\"",
            ),
            (
                json!({"people": 2, "time": "19:00", "guests": ["a", 3]}),
                "arguments.guests[1]: expected string, got a number (3)",
            ),
            (
                json!({"people": 2, "time": "19:00", "pets": 1}),
                "arguments.pets: not a parameter of this tool (it takes guests, notes, people, seating, time)",
            ),
            (json!([1]), "arguments: expected object, got an array ([1])"),
        ];
        for (arguments, expected) in cases {
            assert_eq!(
                check(arguments.clone()).as_deref(),
                Some(expected),
                "{arguments}"
            );
        }
    }

    #[test]
    fn keywords_it_does_not_know_are_left_to_the_backend() {
        let schema = json!({"type": "string", "format": "date", "pattern": "^[0-9]+$"});
        assert_eq!(violation(&json!("tomorrow"), &schema, "a"), None);
        assert_eq!(violation(&json!(1), &json!(true), "a"), None);
    }
}
