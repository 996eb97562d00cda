//! The "no secret is persisted" check (DESIGN.md §1 invariants): persistable JSON (destination
//! configs, session-state and snapshot metadata) may reference secrets only as
//! `RunnerSecretRef {id}`.

use serde_json::Value;

use crate::RunnerError;

/// Lower-case fragments of object keys whose values are treated as secrets.
pub const SECRET_KEY_FRAGMENTS: &[&str] = &[
    "password",
    "passwd",
    "secret",
    "token",
    "api_key",
    "apikey",
    "private_key",
    "credential",
    "access_key",
    "authorization",
];

/// Refuses JSON that holds a value under a secret-looking key (see [`SECRET_KEY_FRAGMENTS`]),
/// anywhere in the tree. Allowed under such keys: `null` and a secret reference `{"id": "…"}`
/// (an object with exactly one string field `id`).
///
/// # Errors
/// [`RunnerError::SecretInMetadata`] naming the key (never the value).
pub fn check_no_secrets(value: &Value) -> Result<(), RunnerError> {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                let lower = key.to_ascii_lowercase();
                if SECRET_KEY_FRAGMENTS.iter().any(|f| lower.contains(f)) && !is_secret_ref(v) {
                    return Err(RunnerError::SecretInMetadata(key.clone()));
                }
                check_no_secrets(v)?;
            }
            Ok(())
        }
        Value::Array(items) => items.iter().try_for_each(check_no_secrets),
        _ => Ok(()),
    }
}

fn is_secret_ref(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Object(m) => m.len() == 1 && m.get("id").is_some_and(Value::is_string),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn refs_pass_values_fail() {
        check_no_secrets(&json!({"url": "ws://x", "token": {"id": "ws"}, "credentials": null}))
            .expect("refs are fine");
        for bad in [
            json!({"token": "abc"}),
            json!({"nested": [{"AWS_SECRET_ACCESS_KEY": "x"}]}),
            json!({"password": {"id": "a", "value": "b"}}),
        ] {
            assert!(matches!(
                check_no_secrets(&bad),
                Err(RunnerError::SecretInMetadata(_))
            ));
        }
    }
}
