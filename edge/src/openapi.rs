//! The OpenAPI 3.1 documents of what the edge serves (edge/openapi/): one per dialect
//! and the inference contract's. The edge serves them as they are, at
//! `GET /openapi/<name>.json`, with an index at `GET /openapi`. The tests below hold
//! each document to the code: its paths to spin.toml's routes, its fields to the names
//! the parser reads, its bounds, enums, types and required fields to what the parser
//! accepts and refuses; tests/tests/openapi.rs runs schemathesis against the live stack.

use serde_json::json;

use crate::api_error::ApiError;
use crate::dialects::Outgoing;

/// Where the documents are served.
pub const ROUTE: &str = "/openapi";

/// Each document's name and text.
pub const DOCUMENTS: [(&str, &str); 5] = [
    ("appypie", include_str!("../openapi/appypie.json")),
    ("holmesai", include_str!("../openapi/holmesai.json")),
    ("modelslab", include_str!("../openapi/modelslab.json")),
    ("hyperbolic", include_str!("../openapi/hyperbolic.json")),
    ("inference", include_str!("../openapi/inference.json")),
];

/// Whether `path` is the documents' (`/openapi`, `/openapi/...`).
pub fn serves(path: &str) -> bool {
    path == ROUTE
        || path
            .strip_prefix(ROUTE)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// The answer to a request for `path` (one that [`serves`]).
pub fn serve(method: &http::Method, path: &str) -> Result<Outgoing, ApiError> {
    if method != http::Method::GET {
        return Err(ApiError::method_not_allowed(method.as_str(), "GET"));
    }
    let url = |name: &str| format!("{ROUTE}/{name}.json");
    let rest = path.strip_prefix(ROUTE).unwrap_or_default();
    if rest.is_empty() || rest == "/" {
        let documents: Vec<_> = DOCUMENTS
            .iter()
            .map(|(name, _)| json!({"name": name, "url": url(name)}))
            .collect();
        return Ok(Outgoing::json(200, &json!({ "documents": documents })));
    }
    let wanted = rest.strip_prefix('/').and_then(|r| r.strip_suffix(".json"));
    match DOCUMENTS.iter().find(|(name, _)| Some(*name) == wanted) {
        Some((_, text)) => Ok(Outgoing {
            status: 200,
            headers: vec![("content-type".into(), "application/json".into())],
            body: text.as_bytes().to_vec(),
        }),
        None => Err(ApiError::new(
            404,
            format!(
                "no document at {path}; the documents: {}",
                DOCUMENTS
                    .iter()
                    .map(|(name, _)| url(name))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use serde_json::{Map, Value, json};

    use super::*;
    use crate::dialects::{self, Incoming, modelslab};
    use crate::fields::read;

    fn doc(name: &str) -> Value {
        let (_, text) = DOCUMENTS.iter().find(|(n, _)| *n == name).unwrap();
        serde_json::from_str(text).unwrap_or_else(|e| panic!("{name}.json: {e}"))
    }

    /// `v`, its `$ref`s followed (within the document).
    fn resolve<'a>(doc: &'a Value, mut v: &'a Value) -> &'a Value {
        while let Some(r) = v.get("$ref").and_then(Value::as_str) {
            let pointer = r.strip_prefix('#').expect("only local $refs");
            v = doc
                .pointer(pointer)
                .unwrap_or_else(|| panic!("a $ref to nothing: {r}"));
        }
        v
    }

    /// One operation of a document.
    struct Operation<'a> {
        path: String,
        method: &'static str,
        op: &'a Value,
    }

    fn operations(doc: &Value) -> Vec<Operation<'_>> {
        let mut ops = Vec::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            let item = resolve(doc, item);
            for method in ["get", "post", "put", "delete", "patch"] {
                if let Some(op) = item.get(method) {
                    ops.push(Operation {
                        path: path.clone(),
                        method,
                        op,
                    });
                }
            }
        }
        ops
    }

    /// A path as a client would send it.
    fn concrete(path: &str) -> String {
        path.replace("{service_id}", "svc-1")
            .replace("{id}", "1234")
    }

    /// The routes spin.toml gives the edge, in OpenAPI's spelling (`{id}` for `:id`).
    fn spin_routes() -> BTreeSet<String> {
        include_str!("../../spin.toml")
            .lines()
            .filter_map(|l| l.trim().strip_prefix("route = \""))
            .map(|r| {
                r.trim_end_matches('"')
                    .split('/')
                    .map(|seg| match seg.strip_prefix(':') {
                        Some(name) => format!("{{{name}}}"),
                        None => seg.to_string(),
                    })
                    .collect::<Vec<_>>()
                    .join("/")
            })
            .collect()
    }

    const DIALECTS: [&str; 4] = ["appypie", "holmesai", "modelslab", "hyperbolic"];

    #[test]
    fn the_documents_cover_exactly_the_routes_of_the_dialects() {
        let mut routes = spin_routes();
        assert!(
            routes.remove("/openapi/..."),
            "spin.toml routes /openapi/..."
        );
        assert!(routes.remove("/generations/..."));
        let mut documented = BTreeSet::new();
        for name in DIALECTS {
            let doc = doc(name);
            for op in operations(&doc) {
                assert_eq!(op.method, "post", "{name} {}", op.path);
                let served = dialects::for_path(&concrete(&op.path)).map(|d| d.name());
                assert_eq!(served, Some(name), "{} in {name}.json", op.path);
                documented.insert(op.path);
            }
        }
        let missing: Vec<_> = routes.difference(&documented).collect();
        let extra: Vec<_> = documented.difference(&routes).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "routed but not documented: {missing:?}; documented but not routed: {extra:?}"
        );
    }

    /// A request body's schema: its properties and required names (a field that may
    /// come under another name is required as an `anyOf` of the names: the first
    /// counts as required, all as in a group).
    struct BodySchema {
        content_type: String,
        properties: BTreeMap<String, Value>,
        required: BTreeSet<String>,
        grouped: BTreeSet<String>,
        example: Map<String, Value>,
    }

    fn body_schema(doc: &Value, op: &Value) -> BodySchema {
        let body = resolve(doc, &op["requestBody"]);
        let (content_type, media) = body["content"]
            .as_object()
            .and_then(|c| c.iter().next())
            .expect("a request body with a content type");
        let schema = resolve(doc, &media["schema"]);
        let mut properties = BTreeMap::new();
        let mut required = BTreeSet::new();
        let mut grouped = BTreeSet::new();
        let parts: Vec<&Value> = match schema["allOf"].as_array() {
            Some(all) => all.iter().map(|s| resolve(doc, s)).collect(),
            None => vec![schema],
        };
        for part in parts {
            for (name, prop) in part["properties"].as_object().into_iter().flatten() {
                properties.insert(name.clone(), resolve(doc, prop).clone());
            }
            for name in part["required"].as_array().into_iter().flatten() {
                required.insert(name.as_str().unwrap().to_string());
            }
            let group: Vec<&str> = part["anyOf"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|alt| alt["required"][0].as_str())
                .collect();
            if let Some(first) = group.first() {
                required.insert(first.to_string());
                grouped.extend(group.iter().map(|n| n.to_string()));
            }
        }
        let example = media["example"]
            .as_object()
            .cloned()
            .unwrap_or_else(|| panic!("no request example"));
        BodySchema {
            content_type: content_type.clone(),
            properties,
            required,
            grouped,
            example,
        }
    }

    /// A tiny real PNG, for the file parts of multipart examples.
    fn png() -> Vec<u8> {
        let img = image::RgbImage::from_pixel(8, 8, image::Rgb([200, 100, 50]));
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    }

    fn is_file(prop: &Value) -> bool {
        prop["format"] == "binary" || prop.get("contentMediaType").is_some()
    }

    /// The request a client would send with these fields.
    fn request(path: &str, schema: &BodySchema, fields: &Map<String, Value>) -> Incoming {
        let (content_type, body) = if schema.content_type == "multipart/form-data" {
            let png = png();
            let texts: Vec<(&str, Option<&str>, Vec<u8>)> = fields
                .iter()
                .map(|(name, value)| match value {
                    _ if schema.properties.get(name).is_some_and(is_file) => {
                        (name.as_str(), Some("in.png"), png.clone())
                    }
                    Value::String(s) => (name.as_str(), None, s.clone().into_bytes()),
                    other => (name.as_str(), None, other.to_string().into_bytes()),
                })
                .collect();
            let parts: Vec<_> = texts
                .iter()
                .map(|(n, f, b)| (*n, *f, b.as_slice()))
                .collect();
            crate::multipart::form(&parts)
        } else {
            (
                schema.content_type.clone(),
                serde_json::to_vec(fields).unwrap(),
            )
        };
        let mut headers = http::HeaderMap::new();
        headers.insert("content-type", content_type.parse().unwrap());
        Incoming::new(http::Method::POST, path.to_string(), headers, body)
    }

    /// What the dialect makes of these fields at `path` (as the edge calls it: the
    /// key, then the fields; a fetch reads the key only), and the names it read.
    fn parse(
        path: &str,
        schema: &BodySchema,
        fields: &Map<String, Value>,
    ) -> (Result<(), ApiError>, BTreeSet<String>) {
        let dialect = dialects::for_path(path).unwrap();
        let req = request(path, schema, fields);
        let fetch = matches!(
            modelslab::endpoint(path),
            Some(modelslab::Endpoint::Fetch(_))
        );
        read::recording(|| {
            dialect.credential(&req)?;
            if fetch {
                return Ok(());
            }
            dialect.parse(&req).map(|_| ())
        })
    }

    /// The JSON types a property's schema allows (none: any).
    fn types(prop: &Value) -> Vec<String> {
        match &prop["type"] {
            Value::String(t) => vec![t.clone()],
            Value::Array(ts) => ts
                .iter()
                .filter_map(|t| t.as_str().map(String::from))
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Numbers just inside and just outside a property's bounds.
    fn bounds(prop: &Value) -> Vec<(Value, bool)> {
        let integer = types(prop).iter().any(|t| t == "integer");
        let mut cases = Vec::new();
        // The smallest step past a bound that the type can say.
        let nudge = |b: f64| {
            if integer {
                1.0
            } else {
                1e-3 * b.abs().max(1.0)
            }
        };
        let outside = |b: f64, up: bool| -> Value {
            let v = if up { b + nudge(b) } else { b - nudge(b) };
            if integer && v.abs() < 9e15 {
                json!(v as i64)
            } else if integer && v > 0.0 {
                // Past u64::MAX: only a float can say it.
                json!(v * 2.0)
            } else {
                json!(v)
            }
        };
        if let Some(min) = prop.get("minimum") {
            cases.push((min.clone(), true));
            cases.push((outside(min.as_f64().unwrap(), false), false));
        }
        if let Some(max) = prop.get("maximum") {
            cases.push((max.clone(), true));
            cases.push((outside(max.as_f64().unwrap(), true), false));
        }
        for (key, up) in [("exclusiveMinimum", false), ("exclusiveMaximum", true)] {
            if let Some(b) = prop.get(key).and_then(Value::as_f64) {
                cases.push((json!(b), false));
                cases.push((json!(if up { b - nudge(b) } else { b + nudge(b) }), true));
            }
        }
        if let (Some(step), Some(min), Some(max)) = (
            prop.get("multipleOf").and_then(Value::as_i64),
            prop.get("minimum").and_then(Value::as_i64),
            prop.get("maximum").and_then(Value::as_i64),
        ) && step > 1
            && min + 1 < max
        {
            cases.push((json!(min + 1), false));
        }
        cases
    }

    /// Every disagreement between a dialect's document and its parser.
    fn disagreements(name: &str) -> Vec<String> {
        let doc = doc(name);
        let mut found = Vec::new();
        for op in operations(&doc) {
            let path = concrete(&op.path);
            let schema = body_schema(&doc, op.op);
            let at = format!("{name}.json {}", op.path);
            let (parsed, read) = parse(&path, &schema, &schema.example);
            if let Err(e) = parsed {
                found.push(format!("{at}: the example is refused: {}", e.message));
                continue;
            }
            let documented: BTreeSet<String> = schema.properties.keys().cloned().collect();
            let undocumented: Vec<_> = read.difference(&documented).collect();
            let unread: Vec<_> = documented.difference(&read).collect();
            if !undocumented.is_empty() {
                found.push(format!("{at}: read but not documented: {undocumented:?}"));
            }
            if !unread.is_empty() {
                found.push(format!("{at}: documented but never read: {unread:?}"));
            }
            let multipart = schema.content_type == "multipart/form-data";
            for (field, prop) in &schema.properties {
                if is_file(prop) {
                    continue;
                }
                // The field alone, without the names that alias it.
                let mut base = schema.example.clone();
                for (other, p) in &schema.properties {
                    if p["x-alias-of"] == field.as_str() || prop["x-alias-of"] == other.as_str() {
                        base.remove(other);
                    }
                }
                let with = |v: Option<Value>| {
                    let mut f = base.clone();
                    match v {
                        Some(v) => f.insert(field.clone(), v),
                        None => f.remove(field),
                    };
                    parse(&path, &schema, &f).0
                };
                // An answer as compared: its error message, if any.
                let answer = |r: Result<(), ApiError>| r.err().map(|e| e.message);
                let refused_naming = |r: &Result<(), ApiError>| {
                    r.as_ref().err().is_some_and(|e| {
                        e.status == 400 && e.message.starts_with(&format!("{field}:"))
                    })
                };
                let mut cases: Vec<(Option<Value>, bool, &str)> = Vec::new();
                if schema.required.contains(field) {
                    cases.push((None, false, "left out (required)"));
                }
                for (v, accepted) in bounds(prop) {
                    cases.push((Some(v), accepted, "at or past a bound"));
                }
                for v in prop["enum"].as_array().into_iter().flatten() {
                    cases.push((Some(v.clone()), true, "in the enum"));
                }
                // The lenient yes/no flags (components/schemas/YesNo): each form
                // answered as true or false is, and anything else refused.
                let flag = prop["anyOf"]
                    .as_array()
                    .is_some_and(|alts| alts.iter().any(|a| a["type"] == "boolean"));
                if flag && !multipart {
                    let forms = [
                        (
                            true,
                            vec![json!(" YES "), json!("True"), json!(1), json!("1")],
                        ),
                        (false, vec![json!("no"), json!(""), json!(0), json!("0")]),
                    ];
                    for (b, same) in forms {
                        let expected = answer(with(Some(json!(b))));
                        for v in same {
                            if answer(with(Some(v.clone()))) != expected {
                                found.push(format!("{at}: {field} = {v} is not answered as {b}"));
                            }
                        }
                    }
                    for v in [json!("maybe"), json!(2)] {
                        cases.push((Some(v), false, "not yes/no"));
                    }
                }
                if prop.get("enum").is_some() {
                    cases.push((Some(json!("zz-not-listed")), false, "not in the enum"));
                }
                if let Some(max) = prop.get("maxLength").and_then(Value::as_u64) {
                    let text = |n: u64| json!("x".repeat(n as usize));
                    cases.push((Some(text(max)), true, "at maxLength"));
                    cases.push((Some(text(max + 1)), false, "past maxLength"));
                }
                // JSON null reads as absent (crate::fields): the same answer, and so
                // nullable exactly when optional (or one name of a required group,
                // whose `anyOf` then says which must be a value).
                if !multipart {
                    let (absent, null) = (answer(with(None)), answer(with(Some(Value::Null))));
                    if absent != null {
                        found.push(format!(
                            "{at}: {field} = null is answered {null:?}, left out {absent:?}"
                        ));
                    }
                    let optional =
                        !schema.required.contains(field) || schema.grouped.contains(field);
                    let ts = types(prop);
                    let nullable = ts.is_empty() || ts.iter().any(|t| t == "null");
                    if optional != nullable {
                        found.push(format!(
                            "{at}: {field} is {}, so its type should {}include null",
                            if optional { "optional" } else { "required" },
                            if optional { "" } else { "not " }
                        ));
                    }
                }
                let typed = !types(prop).is_empty();
                if typed && !multipart && !types(prop).iter().any(|t| t == "object") {
                    cases.push((Some(json!({"zz": 1})), false, "an object"));
                }
                for (value, accepted, why) in cases {
                    let got = with(value.clone());
                    let ok = if accepted {
                        got.is_ok()
                    } else {
                        refused_naming(&got)
                    };
                    if !ok {
                        found.push(format!(
                            "{at}: {field} = {} ({why}) should be {}, got {:?}",
                            value.map_or("(absent)".into(), |v| v.to_string()),
                            if accepted {
                                "accepted"
                            } else {
                                "refused naming it"
                            },
                            got.map_err(|e| e.message)
                        ));
                    }
                }
            }
        }
        found
    }

    fn agree(name: &str) {
        let found = disagreements(name);
        assert!(found.is_empty(), "{}", found.join("\n"));
    }

    #[test]
    fn appypie_document_agrees_with_its_parser() {
        agree("appypie");
    }

    #[test]
    fn holmesai_document_agrees_with_its_parser() {
        agree("holmesai");
    }

    #[test]
    fn modelslab_document_agrees_with_its_parser() {
        agree("modelslab");
    }

    #[test]
    fn hyperbolic_document_agrees_with_its_parser() {
        agree("hyperbolic");
    }

    /// The property names of a schema in the inference document, and its required ones.
    fn contract_schema(doc: &Value, name: &str) -> (BTreeSet<String>, BTreeSet<String>) {
        let s = &doc["components"]["schemas"][name];
        let names = s["properties"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        let required = s["required"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_str().unwrap().to_string())
            .collect();
        (names, required)
    }

    /// What serde writes for a record: every field (`None` as null), and which are
    /// not options (required).
    fn record_fields(value: impl serde::Serialize) -> (BTreeSet<String>, BTreeSet<String>) {
        let obj = serde_json::to_value(value).unwrap();
        let obj = obj.as_object().unwrap();
        let names = obj.keys().cloned().collect();
        let required = obj
            .iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, _)| k.clone())
            .collect();
        (names, required)
    }

    #[test]
    fn inference_document_has_the_contract_records_field_for_field() {
        let doc = doc("inference");
        let init = contract::InitImage {
            image: String::new(),
            strength: 0.5,
            mask: None,
        };
        let control = contract::Controlnet {
            name: String::new(),
            image: String::new(),
            preprocess: None,
            scale: None,
            start: None,
            end: None,
        };
        let lora = contract::Lora {
            name: String::new(),
            strength: 1.0,
        };
        let image = contract::GeneratedImage {
            png: String::new(),
            seed: 1,
            width: 8,
            height: 8,
            nsfw: Some(false),
        };
        let timings = contract::Timings {
            queued_ms: 0,
            prepare_ms: 0,
            denoise_ms: 0,
            decode_ms: 0,
            total_ms: 0,
        };
        let result = contract::GenerateResult {
            model: String::new(),
            steps: 1,
            guidance: 1.0,
            scheduler: String::new(),
            images: vec![],
            timings,
        };
        let records = [
            (
                "GenerateRequest",
                record_fields(contract::GenerateRequest::default()),
            ),
            ("InitImage", record_fields(init)),
            ("Controlnet", record_fields(control)),
            ("Lora", record_fields(lora)),
            // nsfw is always written (null when unchecked): required, nullable.
            ("GeneratedImage", record_fields(image)),
            ("GenerateResult", record_fields(result)),
            ("Timings", record_fields(timings)),
            (
                "Progress",
                record_fields(contract::Progress {
                    state: contract::ProgressState::Unknown,
                    ahead: 0,
                    step: 0,
                    steps: 0,
                    eta_secs: 0.0,
                }),
            ),
        ];
        for (name, (fields, required)) in records {
            assert_eq!(contract_schema(&doc, name), (fields, required), "{name}");
        }
        let variants: BTreeSet<String> = [
            contract::Error::InvalidRequest(String::new()),
            contract::Error::UnknownModel(String::new()),
            contract::Error::Overloaded(1),
            contract::Error::Timeout(String::new()),
            contract::Error::Internal(String::new()),
        ]
        .iter()
        .map(|e| {
            let v = serde_json::to_value(e).unwrap();
            v.as_object().unwrap().keys().next().unwrap().clone()
        })
        .collect();
        let documented: BTreeSet<String> = doc["components"]["schemas"]["Error"]["oneOf"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["required"][0].as_str().unwrap().to_string())
            .collect();
        assert_eq!(documented, variants);
        let paths: BTreeSet<&str> = doc["paths"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let progress = format!("{}/{{trace_id}}", contract::PROGRESS_PATH);
        let routes = BTreeSet::from([
            progress.as_str(),
            contract::GENERATE_PATH,
            contract::MODELS_PATH,
            contract::QUEUE_PATH,
            contract::HEALTH_PATH,
            contract::READY_PATH,
            contract::METRICS_PATH,
        ]);
        assert_eq!(paths, routes);
        let states: Vec<String> = [
            contract::ProgressState::Queued,
            contract::ProgressState::Running,
            contract::ProgressState::Unknown,
        ]
        .iter()
        .map(|s| {
            serde_json::to_value(s)
                .unwrap()
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
        assert_eq!(
            doc["components"]["schemas"]["Progress"]["properties"]["state"]["enum"],
            json!(states)
        );
    }

    #[test]
    fn every_document_is_served_with_an_index() {
        let get = |p: &str| serve(&http::Method::GET, p);
        let index: Value = serde_json::from_slice(&get("/openapi").unwrap().body).unwrap();
        assert_eq!(
            index["documents"].as_array().unwrap().len(),
            DOCUMENTS.len()
        );
        for (name, text) in DOCUMENTS {
            let out = get(&format!("/openapi/{name}.json")).unwrap();
            assert_eq!((out.status, out.body.as_slice()), (200, text.as_bytes()));
            assert_eq!(doc(name)["openapi"], "3.1.0", "{name}");
        }
        let missing = get("/openapi/nope.json").unwrap_err();
        assert_eq!(missing.status, 404);
        assert!(missing.message.contains("/openapi/hyperbolic.json"));
        assert_eq!(
            serve(&http::Method::POST, "/openapi").unwrap_err().status,
            405
        );
        assert!(serves("/openapi") && serves("/openapi/x.json") && !serves("/openapix"));
    }
}
