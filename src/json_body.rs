//! JSON request bodies, read strictly: one JSON object whose keys the endpoint knows. A typo
//! (`ttl` for `ttl_secs`) would otherwise be ignored without a word and the request would do
//! something other than what its sender meant; it is refused, naming the key.

use crate::error::Error;
use serde_json::Value;

/// The body as a JSON object (a `Value::Object`) whose keys are all in `allowed`; checking the
/// values stays with the handler. 400 for anything that is not an object, and for an unknown key.
pub fn object(body: &[u8], allowed: &'static [&'static str]) -> Result<Value, Error> {
    const NOT_AN_OBJECT: Error = Error::BadRequest("Body must be a JSON object");
    let value: Value = serde_json::from_slice(body).map_err(|_| NOT_AN_OBJECT)?;
    let Value::Object(map) = &value else {
        return Err(NOT_AN_OBJECT);
    };
    if let Some(key) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(Error::UnknownKey {
            key: key.clone(),
            allowed,
        });
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEYS: &[&str] = &["state", "ttl_secs"];

    #[test]
    fn an_object_of_known_keys_passes() {
        let v = object(br#"{"state":"s","ttl_secs":null}"#, KEYS).unwrap();
        assert_eq!(v["state"], "s");
        assert!(object(b"{}", KEYS).is_ok());
    }

    #[test]
    fn anything_but_an_object_is_refused_as_such() {
        for body in [
            &b"[]"[..],
            b"[{\"state\":\"s\"}]",
            b"\"s\"",
            b"null",
            b"1",
            b"",
            b"{",
        ] {
            assert_eq!(
                object(body, KEYS),
                Err(Error::BadRequest("Body must be a JSON object")),
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn an_unknown_key_is_named() {
        let e = object(br#"{"state":"s","ttl":300}"#, KEYS).unwrap_err();
        assert_eq!(
            e,
            Error::UnknownKey {
                key: "ttl".into(),
                allowed: KEYS
            }
        );
        assert_eq!(e.status(), 400);
        assert_eq!(
            e.words(),
            "Unknown key \"ttl\" in the body (the keys are: state, ttl_secs)"
        );
    }
}
