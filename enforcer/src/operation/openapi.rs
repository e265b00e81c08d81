//! Importing an OpenAPI 3 document as declared operations, and validating requests
//! against its parameter and JSON request-body schemas with the `jsonschema` crate.
//!
//! OpenAPI schema objects are turned into JSON Schema: for 3.0 `nullable` becomes a type
//! union and the draft is 4 (boolean `exclusiveMaximum`); 3.1 schemas are JSON Schema
//! 2020-12 already. `$ref`s to `#/components/...` resolve because every compiled schema
//! carries the document's (converted) `components` at its root.

use std::borrow::Cow;
use std::path::Path;

use serde_json::{Map, Value, json};

use super::pattern::OperationPattern;

/// Why a document could not be imported.
#[derive(Debug, thiserror::Error)]
pub enum OpenApiError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: not YAML/JSON: {message}")]
    Syntax { path: String, message: String },
    #[error("{path}: not an OpenAPI 3.0 document: {message}")]
    Structure { path: String, message: String },
    #[error("{path}: unsupported version {version:?} (expected 3.0.x or 3.1.x)")]
    Version { path: String, version: String },
    #[error("{location}: {message}")]
    Schema { location: String, message: String },
}

/// One declared parameter (path or query).
#[derive(Debug)]
pub struct ParamSchema {
    pub name: String,
    pub required: bool,
    validator: Option<jsonschema::Validator>,
}

/// The schemas of one declared operation.
#[derive(Debug, Default)]
pub struct OperationSchema {
    pub path_params: Vec<ParamSchema>,
    pub query_params: Vec<ParamSchema>,
    pub body_required: bool,
    body: Option<jsonschema::Validator>,
}

impl OperationSchema {
    /// Whether the JSON request body has to be buffered to validate it.
    pub fn wants_body(&self) -> bool {
        self.body.is_some()
    }

    /// Validates path and query parameters; pushes human-readable violations.
    pub fn validate_params(
        &self,
        path_params: &[(&str, &str)],
        query: &[(Cow<'_, str>, Cow<'_, str>)],
        out: &mut Vec<String>,
    ) {
        for p in &self.path_params {
            if let Some((_, value)) = path_params.iter().find(|(n, _)| *n == p.name) {
                check_value(p, value, "path parameter", out);
            }
        }
        for p in &self.query_params {
            // Every occurrence: upstreams differ on which of repeated values they read.
            let mut present = false;
            for (_, value) in query.iter().filter(|(k, _)| k == &p.name) {
                present = true;
                check_value(p, value, "query parameter", out);
            }
            if !present && p.required {
                out.push(format!("query parameter {:?} is required", p.name));
            }
        }
    }

    /// Validates a JSON body (`None` when there was none or it was not JSON).
    pub fn validate_body(&self, body: Option<&Value>, body_present: bool, out: &mut Vec<String>) {
        let Some(validator) = &self.body else { return };
        match body {
            Some(value) => {
                for error in validator.iter_errors(value).take(10) {
                    let at = error.instance_path().to_string();
                    let at = if at.is_empty() { "/".to_owned() } else { at };
                    out.push(format!("body {at}: {error}"));
                }
            }
            None if body_present => out.push("body is not valid JSON".to_owned()),
            None if self.body_required => out.push("a JSON request body is required".to_owned()),
            None => {}
        }
    }
}

fn check_value(p: &ParamSchema, raw: &str, what: &str, out: &mut Vec<String>) {
    let Some(validator) = &p.validator else {
        return;
    };
    let value = coerce(raw);
    if !validator.is_valid(&value) && !validator.is_valid(&Value::String(raw.to_owned())) {
        let reason = validator
            .iter_errors(&value)
            .next()
            .map(|e| e.to_string())
            .unwrap_or_else(|| "does not match its schema".to_owned());
        out.push(format!("{what} {:?} = {raw:?}: {reason}", p.name));
    }
}

/// Parameters arrive as text; try the JSON reading first (so `42` can be an integer).
fn coerce(raw: &str) -> Value {
    if let Ok(i) = raw.parse::<i64>() {
        return Value::from(i);
    }
    if let Ok(f) = raw.parse::<f64>()
        && f.is_finite()
    {
        return Value::from(f);
    }
    match raw {
        "true" => Value::Bool(true),
        "false" => Value::Bool(false),
        _ => Value::String(raw.to_owned()),
    }
}

/// A parsed document: its declared operations and their schemas.
#[derive(Debug)]
pub struct OpenApiDocument {
    pub operations: Vec<(OperationPattern, OperationSchema)>,
}

const METHOD_KEYS: [&str; 7] = ["get", "head", "post", "put", "patch", "delete", "options"];

/// Loads a document from a YAML or JSON file.
pub fn load_openapi(path: &Path) -> Result<OpenApiDocument, OpenApiError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| OpenApiError::Read {
        path: shown.clone(),
        source,
    })?;
    parse_openapi(&text, &shown)
}

/// Parses a document (YAML is a superset of JSON).
pub fn parse_openapi(text: &str, shown: &str) -> Result<OpenApiDocument, OpenApiError> {
    let doc: Value = serde_yaml_ng::from_str(text).map_err(|e| OpenApiError::Syntax {
        path: shown.to_owned(),
        message: e.to_string(),
    })?;
    let version = doc
        .get("openapi")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let v31 = if version.starts_with("3.0") {
        // Structural check with the typed model of 3.0.
        serde_json::from_value::<openapiv3::OpenAPI>(doc.clone()).map_err(|e| {
            OpenApiError::Structure {
                path: shown.to_owned(),
                message: e.to_string(),
            }
        })?;
        false
    } else if version.starts_with("3.1") {
        true
    } else {
        return Err(OpenApiError::Version {
            path: shown.to_owned(),
            version,
        });
    };
    let components = doc.get("components").cloned().unwrap_or_else(|| json!({}));
    let converted_components = if v31 {
        components.clone()
    } else {
        convert_30(&components)
    };
    let mut operations = Vec::new();
    let Some(paths) = doc.get("paths").and_then(Value::as_object) else {
        return Ok(OpenApiDocument { operations });
    };
    for (path, item) in paths {
        let item = resolve_ref(&doc, item);
        let shared_params = item
            .get("parameters")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for method in METHOD_KEYS {
            let Some(op) = item.get(method) else { continue };
            let location = format!("paths.{path}.{method}");
            let written = format!("{} {}", method.to_ascii_uppercase(), path);
            let pattern =
                OperationPattern::parse(&written).map_err(|message| OpenApiError::Schema {
                    location: location.clone(),
                    message,
                })?;
            let mut schema = OperationSchema::default();
            let own = op
                .get("parameters")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            // Operation-level parameters override path-level ones of the same name and place.
            let mut params: Vec<Value> = Vec::new();
            for p in shared_params.iter().chain(own.iter()) {
                let p = resolve_ref(&doc, p).clone();
                let key = (p.get("name").cloned(), p.get("in").cloned());
                params.retain(|q| (q.get("name").cloned(), q.get("in").cloned()) != key);
                params.push(p);
            }
            for p in params {
                let name = p
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                let place = p.get("in").and_then(Value::as_str).unwrap_or_default();
                let required = p
                    .get("required")
                    .and_then(Value::as_bool)
                    .unwrap_or(place == "path");
                let validator = match p.get("schema") {
                    Some(s) => Some(compile(
                        s,
                        &converted_components,
                        v31,
                        &format!("{location}.parameters.{name}"),
                    )?),
                    None => None,
                };
                let param = ParamSchema {
                    name,
                    required,
                    validator,
                };
                match place {
                    "path" => schema.path_params.push(param),
                    "query" => schema.query_params.push(param),
                    _ => {}
                }
            }
            if let Some(body) = op.get("requestBody") {
                let body = resolve_ref(&doc, body);
                schema.body_required = body
                    .get("required")
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                let json_schema = body
                    .get("content")
                    .and_then(Value::as_object)
                    .and_then(|c| {
                        c.iter()
                            .find(|(k, _)| is_json_media_type(k))
                            .map(|(_, v)| v)
                    })
                    .and_then(|media| media.get("schema"));
                if let Some(s) = json_schema {
                    schema.body = Some(compile(
                        s,
                        &converted_components,
                        v31,
                        &format!("{location}.requestBody"),
                    )?);
                }
            }
            operations.push((pattern, schema));
        }
    }
    Ok(OpenApiDocument { operations })
}

fn is_json_media_type(media: &str) -> bool {
    let media = media.split(';').next().unwrap_or_default().trim();
    media == "application/json" || media.ends_with("+json")
}

/// Follows a local `$ref` (one level, e.g. `#/components/parameters/Id`).
fn resolve_ref<'a>(doc: &'a Value, value: &'a Value) -> &'a Value {
    match value
        .get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.strip_prefix('#'))
    {
        Some(pointer) => doc.pointer(pointer).unwrap_or(value),
        None => value,
    }
}

fn compile(
    schema: &Value,
    components: &Value,
    v31: bool,
    location: &str,
) -> Result<jsonschema::Validator, OpenApiError> {
    let mut root = if v31 {
        schema.clone()
    } else {
        convert_30(schema)
    };
    let root_obj = match &mut root {
        Value::Object(map) => map,
        _ => {
            return Err(OpenApiError::Schema {
                location: location.to_owned(),
                message: "schema must be an object".into(),
            });
        }
    };
    root_obj.insert("components".to_owned(), components.clone());
    let mut options = jsonschema::options();
    if v31 {
        options = options.with_draft(jsonschema::Draft::Draft202012);
    } else {
        options = options.with_draft(jsonschema::Draft::Draft4);
    }
    options.build(&root).map_err(|e| OpenApiError::Schema {
        location: location.to_owned(),
        message: e.to_string(),
    })
}

/// OpenAPI 3.0 schema object → JSON Schema draft 4 (recursively): `nullable: true` adds
/// `null` to the type; OpenAPI-only keywords are dropped.
fn convert_30(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut out = Map::with_capacity(map.len());
            for (k, v) in map {
                match k.as_str() {
                    "nullable" | "discriminator" | "xml" | "externalDocs" | "example"
                    | "deprecated" => {}
                    _ => {
                        out.insert(k.clone(), convert_30(v));
                    }
                }
            }
            if map.get("nullable").and_then(Value::as_bool) == Some(true) {
                if let Some(t) = out.get("type").cloned() {
                    let types = match t {
                        Value::Array(mut a) => {
                            a.push(Value::from("null"));
                            Value::Array(a)
                        }
                        other => json!([other, "null"]),
                    };
                    out.insert("type".to_owned(), types);
                }
                if let Some(Value::Array(e)) = out.get_mut("enum") {
                    e.push(Value::Null);
                }
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(items.iter().map(convert_30).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = r##"
openapi: 3.0.3
info: { title: bank, version: "1" }
paths:
  /api/v1/accounts/{account_id}/balance:
    parameters:
      - { name: account_id, in: path, required: true, schema: { type: integer, minimum: 1 } }
    get:
      parameters:
        - { name: currency, in: query, required: false, schema: { type: string, enum: [EUR, USD] } }
      responses: { "200": { description: ok } }
  /api/v1/transferFunds:
    post:
      requestBody:
        required: true
        content:
          application/json:
            schema: { $ref: "#/components/schemas/Transfer" }
      responses: { "200": { description: ok } }
components:
  schemas:
    Transfer:
      type: object
      additionalProperties: false
      required: [from, to, amount]
      properties:
        from: { type: integer }
        to: { type: integer }
        amount: { type: number, exclusiveMinimum: true, minimum: 0 }
        memo: { type: string, nullable: true, maxLength: 140 }
"##;

    #[test]
    fn validates_parameters_and_bodies() {
        let doc = parse_openapi(DOC, "test").unwrap();
        assert_eq!(doc.operations.len(), 2);
        let (_, balance) = &doc.operations[0];
        let mut out = Vec::new();
        balance.validate_params(
            &[("account_id", "12")],
            &[(Cow::from("currency"), Cow::from("EUR"))],
            &mut out,
        );
        assert!(out.is_empty(), "{out:?}");
        balance.validate_params(
            &[("account_id", "abc")],
            &[(Cow::from("currency"), Cow::from("XBT"))],
            &mut out,
        );
        assert_eq!(out.len(), 2, "{out:?}");
        let (_, transfer) = &doc.operations[1];
        let mut out = Vec::new();
        transfer.validate_body(
            Some(&json!({"from": 1, "to": 2, "amount": 5.0, "memo": null})),
            true,
            &mut out,
        );
        assert!(out.is_empty(), "{out:?}");
        transfer.validate_body(
            Some(&json!({"from": 1, "to": 2, "amount": 0, "admin": true})),
            true,
            &mut out,
        );
        assert_eq!(out.len(), 2, "{out:?}");
        let mut out = Vec::new();
        transfer.validate_body(None, false, &mut out);
        assert_eq!(out, vec!["a JSON request body is required".to_owned()]);
    }

    #[test]
    fn accepts_openapi_31_and_rejects_other_versions() {
        let doc = r##"
openapi: 3.1.0
info: { title: t, version: "1" }
paths:
  /profile:
    put:
      requestBody:
        content:
          application/merge-patch+json:
            schema:
              type: object
              properties:
                nickname: { type: [string, "null"], maxLength: 20 }
      responses: { "200": { description: ok } }
"##;
        let parsed = parse_openapi(doc, "t").unwrap();
        let (pattern, schema) = &parsed.operations[0];
        assert_eq!(pattern.display(), "PUT /profile");
        let mut out = Vec::new();
        schema.validate_body(Some(&json!({"nickname": null})), true, &mut out);
        assert!(out.is_empty(), "{out:?}");
        schema.validate_body(Some(&json!({"nickname": 7})), true, &mut out);
        assert_eq!(out.len(), 1, "{out:?}");
        assert!(matches!(
            parse_openapi("swagger: '2.0'\n", "t"),
            Err(OpenApiError::Version { .. })
        ));
    }
}
