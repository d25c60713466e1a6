//! GraphQL over HTTP (<https://graphql.github.io/graphql-over-http/draft/>), as the
//! reference audit checks it (`graphql-http`'s `auditServer`, run by tests/api/over_http.rs):
//! GET and POST request parsing, `Accept` negotiation between
//! `application/graphql-response+json` and the legacy `application/json`, and the
//! response's status and shape.
//!
//! With `application/graphql-response+json`, a request that fails before execution
//! (parse, validation, variables, limits) is HTTP 400; with `application/json` it is
//! 200, as legacy clients expect. Either way such a response has no `data` entry.

use actix_web::http::{Method, StatusCode, header};
use actix_web::{HttpRequest, HttpResponse, web};
use async_graphql::parser::types::{DocumentOperations, OperationType};
use async_graphql::{ServerError, Variables};
use serde_json::{Map, Value as Json, json};

pub const GRAPHQL_RESPONSE_JSON: &str = "application/graphql-response+json";

/// The response media type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MediaType {
    GraphQLResponse,
    Json,
}

impl MediaType {
    pub fn content_type(self) -> &'static str {
        match self {
            MediaType::GraphQLResponse => "application/graphql-response+json; charset=utf-8",
            MediaType::Json => "application/json; charset=utf-8",
        }
    }
}

/// The media type to answer in, from the `Accept` header: `application/json` when
/// there is none (or only `*/*`), the official one when the client prefers it or
/// rates both alike, `None` when it accepts neither.
pub fn negotiate(accept: Option<&str>) -> Option<MediaType> {
    let Some(accept) = accept.map(str::trim).filter(|a| !a.is_empty()) else {
        return Some(MediaType::Json);
    };
    let (mut official, mut json) = (0.0_f32, 0.0_f32);
    for range in accept.split(',') {
        let mut parts = range.split(';');
        let essence = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let q = parts
            .filter_map(|p| {
                let (k, v) = p.split_once('=')?;
                k.trim().eq_ignore_ascii_case("q").then(|| v.trim())
            })
            .next()
            .map_or(1.0, |v| v.parse::<f32>().unwrap_or(0.0).clamp(0.0, 1.0));
        match essence.as_str() {
            GRAPHQL_RESPONSE_JSON => official = official.max(q),
            "application/json" | "application/*" | "*/*" => json = json.max(q),
            _ => {}
        }
    }
    if official > 0.0 && official >= json {
        Some(MediaType::GraphQLResponse)
    } else if json > 0.0 {
        Some(MediaType::Json)
    } else {
        None
    }
}

/// Reads a GraphQL request from a POST body or a GET query string, or answers the
/// client's mistake (406, 415, 413, 400, or 405 for a mutation over GET).
pub async fn read_request(
    req: &HttpRequest,
    payload: web::Payload,
    max_body_bytes: usize,
) -> Result<(async_graphql::Request, MediaType), HttpResponse> {
    let accept = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok());
    let Some(media) = negotiate(accept) else {
        return Err(refuse(
            StatusCode::NOT_ACCEPTABLE,
            "NOT_ACCEPTABLE",
            format!("responses are {GRAPHQL_RESPONSE_JSON} or application/json"),
            MediaType::Json,
        ));
    };
    let bad = |message: String| refuse(StatusCode::BAD_REQUEST, "BAD_USER_INPUT", message, media);

    let is_get = req.method() == Method::GET;
    let params = if is_get {
        Params::from_query_string(req.query_string()).map_err(bad)?
    } else {
        if !is_json_content_type(req) {
            return Err(refuse(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UNSUPPORTED_MEDIA_TYPE",
                "send the request as Content-Type: application/json".into(),
                media,
            ));
        }
        let body = match payload.to_bytes_limited(max_body_bytes).await {
            Ok(Ok(body)) => body,
            Ok(Err(_)) => return Err(bad("the request body could not be read".into())),
            Err(_) => {
                return Err(refuse(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "PAYLOAD_TOO_LARGE",
                    format!("the request body is larger than {max_body_bytes} bytes"),
                    media,
                ));
            }
        };
        if body.is_empty() {
            return Err(bad("the request body is empty".into()));
        }
        let json: Json = serde_json::from_slice(&body)
            .map_err(|e| bad(format!("the body is not a GraphQL request: {e}")))?;
        Params::from_json(json).map_err(bad)?
    };

    let mut request = params.into_request();
    if is_get && selects_mutation(&mut request) {
        let mut refusal = refuse(
            StatusCode::METHOD_NOT_ALLOWED,
            "METHOD_NOT_ALLOWED",
            "mutations are sent with POST".into(),
            media,
        );
        refusal
            .headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("POST"));
        return Err(refusal);
    }
    Ok((request, media))
}

/// POST bodies are `application/json` (UTF-8): anything else, or no type, is 415.
fn is_json_content_type(req: &HttpRequest) -> bool {
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mut parts = content_type.split(';');
    let essence = parts.next().unwrap_or("").trim();
    let utf8 = parts.all(|p| match p.split_once('=') {
        Some((k, v)) if k.trim().eq_ignore_ascii_case("charset") => {
            v.trim().trim_matches('"').eq_ignore_ascii_case("utf-8")
        }
        _ => true,
    });
    essence.eq_ignore_ascii_case("application/json") && utf8
}

/// The request parameters of the spec, type-checked.
#[derive(Debug, Default, PartialEq)]
struct Params {
    query: String,
    operation_name: Option<String>,
    variables: Option<Map<String, Json>>,
}

impl Params {
    fn from_json(body: Json) -> Result<Params, String> {
        let Json::Object(mut body) = body else {
            return Err("the body must be a JSON object".into());
        };
        let query = match body.remove("query") {
            Some(Json::String(q)) => q,
            None | Some(Json::Null) => return Err("the request has no `query`".into()),
            Some(_) => return Err("`query` must be a string".into()),
        };
        let operation_name = match body.remove("operationName") {
            None | Some(Json::Null) => None,
            Some(Json::String(name)) => Some(name),
            Some(_) => return Err("`operationName` must be a string".into()),
        };
        let variables = map_param("variables", body.remove("variables"))?;
        // Podium reads no request extensions, but they must be well-formed.
        map_param("extensions", body.remove("extensions"))?;
        Ok(Params {
            query,
            operation_name,
            variables,
        })
    }

    /// GET: `query`, `operationName`, and `variables`/`extensions` as JSON text.
    fn from_query_string(query_string: &str) -> Result<Params, String> {
        let pairs = web::Query::<Vec<(String, String)>>::from_query(query_string)
            .map_err(|_| "the query string is malformed".to_string())?
            .into_inner();
        let mut body = Map::new();
        for (key, value) in pairs {
            let value = match key.as_str() {
                "variables" | "extensions" => {
                    serde_json::from_str(&value).map_err(|_| format!("`{key}` is not JSON"))?
                }
                "operationName" if value.is_empty() => Json::Null,
                _ => Json::String(value),
            };
            if body.insert(key.clone(), value).is_some() {
                return Err(format!("`{key}` is given twice"));
            }
        }
        Params::from_json(Json::Object(body))
    }

    fn into_request(self) -> async_graphql::Request {
        let mut request = async_graphql::Request::new(self.query);
        request.operation_name = self.operation_name;
        if let Some(variables) = self.variables {
            request = request.variables(Variables::from_json(Json::Object(variables)));
        }
        request
    }
}

fn map_param(name: &str, value: Option<Json>) -> Result<Option<Map<String, Json>>, String> {
    match value {
        None | Some(Json::Null) => Ok(None),
        Some(Json::Object(map)) => Ok(Some(map)),
        Some(_) => Err(format!("`{name}` must be a map")),
    }
}

/// Whether the operation the request would run is a mutation (an unparsable or
/// ambiguous document is left for execution to report).
fn selects_mutation(request: &mut async_graphql::Request) -> bool {
    let name = request.operation_name.clone();
    let Ok(doc) = request.parsed_query() else {
        return false;
    };
    let operation = match (&doc.operations, name) {
        (DocumentOperations::Single(op), None) => Some(op),
        (DocumentOperations::Multiple(ops), Some(name)) => ops.get(name.as_str()),
        (DocumentOperations::Multiple(ops), None) if ops.len() == 1 => ops.values().next(),
        _ => None,
    };
    operation.is_some_and(|op| op.node.ty == OperationType::Mutation)
}

/// The HTTP response for an executed request.
pub fn respond(response: async_graphql::Response, media: MediaType) -> HttpResponse {
    let request_error = is_request_error(&response);
    let status = if request_error && media == MediaType::GraphQLResponse {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    let retry_after = response.errors.iter().find_map(|e| {
        let ext = e.extensions.as_ref()?;
        match (ext.get("code"), ext.get("retryAfter")) {
            (Some(async_graphql::Value::String(code)), Some(async_graphql::Value::Number(n)))
                if code == "RATE_LIMITED" =>
            {
                n.as_u64()
            }
            _ => None,
        }
    });
    let mut builder = HttpResponse::build(status);
    builder.insert_header((header::CACHE_CONTROL, "no-store"));
    for (name, value) in response.http_headers.iter() {
        if let Ok(value) = value.to_str() {
            builder.insert_header((name.as_str(), value));
        }
    }
    if let Some(secs) = retry_after {
        builder.insert_header((header::RETRY_AFTER, secs.to_string()));
    }
    builder.insert_header((header::CONTENT_TYPE, media.content_type()));
    let mut body = serde_json::to_value(&response).unwrap_or_else(|_| json!({}));
    if request_error && let Some(body) = body.as_object_mut() {
        body.remove("data");
    }
    builder.body(body.to_string())
}

/// A request error (the spec's term): the request failed before execution began,
/// so no error points into the (absent) data. Field errors always carry a path.
fn is_request_error(response: &async_graphql::Response) -> bool {
    response.data == async_graphql::Value::Null
        && !response.errors.is_empty()
        && response
            .errors
            .iter()
            .all(|e: &ServerError| e.path.is_empty())
}

/// A refusal before GraphQL execution, in the GraphQL response shape.
pub fn refuse(status: StatusCode, code: &str, message: String, media: MediaType) -> HttpResponse {
    HttpResponse::build(status)
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((header::CONTENT_TYPE, media.content_type()))
        .body(
            json!({ "errors": [{ "message": message, "extensions": { "code": code } }] })
                .to_string(),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_negotiation() {
        use MediaType::*;
        assert_eq!(negotiate(None), Some(Json));
        assert_eq!(negotiate(Some("*/*")), Some(Json));
        assert_eq!(negotiate(Some("application/json")), Some(Json));
        assert_eq!(
            negotiate(Some(GRAPHQL_RESPONSE_JSON)),
            Some(GraphQLResponse)
        );
        assert_eq!(
            negotiate(Some(
                "application/graphql-response+json, application/json;q=0.9"
            )),
            Some(GraphQLResponse)
        );
        assert_eq!(
            negotiate(Some(
                "application/graphql-response+json;q=0.5, application/json"
            )),
            Some(Json)
        );
        assert_eq!(
            negotiate(Some("application/json, text/plain, */*")),
            Some(Json)
        );
        assert_eq!(negotiate(Some("text/html")), None);
        assert_eq!(negotiate(Some("application/json;q=0")), None);
    }

    #[test]
    fn parameters_are_type_checked() {
        let ok = Params::from_json(json!({ "query": "{ a }", "operationName": null,
            "variables": { "x": 1 }, "extensions": null }))
        .unwrap();
        assert_eq!(ok.query, "{ a }");
        for bad in [
            json!({ "notquery": "{ a }" }),
            json!({ "query": 0 }),
            json!({ "query": "{ a }", "operationName": false }),
            json!({ "query": "{ a }", "variables": "x" }),
            json!({ "query": "{ a }", "variables": ["x"] }),
            json!({ "query": "{ a }", "extensions": 0 }),
            json!(["{ a }"]),
        ] {
            assert!(Params::from_json(bad.clone()).is_err(), "{bad}");
        }
        let get = Params::from_query_string(
            "query=query%20Q(%24n%3A%20Int)%7Ba%7D&variables=%7B%22n%22%3A1%7D&operationName=Q",
        )
        .unwrap();
        assert_eq!(get.operation_name.as_deref(), Some("Q"));
        assert_eq!(get.variables.unwrap()["n"], 1);
        assert!(Params::from_query_string("query=a&query=b").is_err());
        assert!(Params::from_query_string("query=a&variables=nope").is_err());
    }

    #[test]
    fn mutations_are_found_by_operation_name() {
        let mut r = async_graphql::Request::new("query A { a } mutation B { b }");
        assert!(!selects_mutation(&mut r));
        let mut r =
            async_graphql::Request::new("query A { a } mutation B { b }").operation_name("B");
        assert!(selects_mutation(&mut r));
        let mut r = async_graphql::Request::new("mutation { __typename }");
        assert!(selects_mutation(&mut r));
    }
}
