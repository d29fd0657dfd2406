//! Checks real answers against `openapi.json`: the status is documented for the operation, the
//! media type is one it documents, required response headers are there, and a JSON body
//! validates against the documented schema (with `$ref`s into the document's components).

use super::HttpResponse;
use serde_json::{json, Value};

/// The document as committed at the repository root.
pub fn document() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json");
    let text = std::fs::read_to_string(path).expect("read openapi.json");
    serde_json::from_str(&text).expect("openapi.json is JSON")
}

/// Follows a local `$ref` (`#/components/...`) until the value is not a reference.
pub fn resolve<'d>(doc: &'d Value, mut value: &'d Value) -> &'d Value {
    while let Some(r) = value.get("$ref").and_then(Value::as_str) {
        let pointer = r
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("non-local $ref {r}"));
        value = doc
            .pointer(pointer)
            .unwrap_or_else(|| panic!("$ref {r} points nowhere"));
    }
    value
}

/// Every `$ref` anywhere in the document, as written.
pub fn refs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("$ref", Value::String(r)) => out.push(r.clone()),
                    _ => refs(v, out),
                }
            }
        }
        Value::Array(list) => list.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

/// Validates `instance` against `schema`, a schema from the document: it is embedded in a root
/// that carries the document's `components`, so `#/components/schemas/...` resolves there.
pub fn validate(doc: &Value, schema: &Value, instance: &Value) -> Result<(), String> {
    let root = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "components": doc["components"],
        "allOf": [schema],
    });
    let validator = jsonschema::options()
        .should_validate_formats(true)
        .build(&root)
        .map_err(|e| format!("the schema does not compile: {e}"))?;
    let errors: Vec<String> = validator
        .iter_errors(instance)
        .map(|e| format!("{e} at {}", e.instance_path()))
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

/// Panics unless `res` is an answer the document allows for `method` on `template` (the route's
/// name, `/api/callback/{state}`). Returns the documented response object.
pub fn check<'d>(doc: &'d Value, template: &str, method: &str, res: &HttpResponse) -> &'d Value {
    let what = format!("{method} {template} -> {}", res.status);
    let operation = doc["paths"][template]
        .get(method.to_ascii_lowercase())
        .unwrap_or_else(|| panic!("{what}: the operation is not documented"));
    let documented = operation["responses"]
        .get(res.status.to_string())
        .unwrap_or_else(|| panic!("{what}: status not documented; body {}", res.text()));
    let documented = resolve(doc, documented);
    if let Some(headers) = documented.get("headers").and_then(Value::as_object) {
        for (name, header) in headers {
            let header = resolve(doc, header);
            if header["required"] == true {
                assert!(res.header(name).is_some(), "{what}: no {name} header");
            }
            if let (Some(value), Some(schema)) = (res.header(name), header.get("schema")) {
                if let Err(e) = validate(doc, schema, &json!(value)) {
                    panic!("{what}: header {name}: {value:?}: {e}");
                }
            }
        }
    }
    let Some(content) = documented.get("content").and_then(Value::as_object) else {
        assert!(
            res.body.is_empty(),
            "{what}: no body documented, got {}",
            res.text()
        );
        return documented;
    };
    let media = res.media_type();
    let schema = content
        .get(&media)
        .unwrap_or_else(|| {
            panic!(
                "{what}: content type {media:?} not documented (documented: {:?})",
                content.keys().collect::<Vec<_>>()
            )
        })
        .get("schema");
    if method == "HEAD" {
        assert!(res.body.is_empty(), "{what}: a HEAD answer with a body");
    } else if media == "application/json" {
        let body = res.json();
        if let Some(schema) = schema {
            if let Err(e) = validate(doc, schema, &body) {
                panic!("{what}: the body does not match the documented schema: {e}\n{body}");
            }
        }
    }
    documented
}

/// Panics unless a request the relay sent to the webhook endpoint is the documented event:
/// its headers match the webhook's header parameters and its body the request body's schema.
pub fn check_webhook(doc: &Value, name: &str, headers: &[(String, String)], body: &str) {
    let operation = &doc["webhooks"][name]["post"];
    assert!(operation.is_object(), "webhook {name} is not documented");
    for parameter in operation["parameters"].as_array().unwrap() {
        let parameter = resolve(doc, parameter);
        let header = parameter["name"].as_str().unwrap();
        let value = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(header))
            .map(|(_, v)| v);
        match value {
            None => assert!(parameter["required"] != true, "webhook {name}: no {header}"),
            Some(v) => {
                if let Err(e) = validate(doc, &parameter["schema"], &json!(v)) {
                    panic!("webhook {name}: header {header}: {v:?}: {e}");
                }
            }
        }
    }
    let schema = &operation["requestBody"]["content"]["application/json"]["schema"];
    let body: Value = serde_json::from_str(body).expect("a JSON event");
    if let Err(e) = validate(doc, schema, &body) {
        panic!("webhook {name}: the event does not match the documented schema: {e}\n{body}");
    }
}
