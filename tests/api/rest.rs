//! Runs every request in `rest/*.http` against a test server, in file order, so the
//! examples never rot. Supports the REST Client subset the files use: `@var = value`,
//! `# @name x` with `{{x.response.body.$.a.b}}`, and our `# @expect-error CODE` and
//! `# @until $.a.b == VALUE` (the request is repeated, 30 s at most, until the response holds
//! that value: for what the server does in the background, like an instance starting).

use std::collections::HashMap;

use serde_json::Value;

use crate::helpers::*;

#[derive(Debug, Default)]
struct HttpRequest {
    title: String,
    name: Option<String>,
    expect_error: Option<String>,
    until: Option<(String, String)>,
    method: String,
    url: String,
    headers: Vec<(String, String)>,
    body: String,
}

fn parse(text: &str) -> (HashMap<String, String>, Vec<HttpRequest>) {
    let mut vars = HashMap::new();
    let mut requests = Vec::new();
    for block in text.split("\n###") {
        let mut req = HttpRequest::default();
        let mut lines = block.lines();
        req.title = lines
            .next()
            .unwrap_or("")
            .trim()
            .trim_start_matches('#')
            .trim()
            .to_string();
        let mut in_headers = false;
        let mut body = Vec::new();
        for line in lines {
            let trimmed = line.trim();
            if req.method.is_empty() {
                if let Some(rest) = trimmed.strip_prefix("# @name ") {
                    req.name = Some(rest.trim().to_string());
                } else if let Some(rest) = trimmed.strip_prefix("# @expect-error ") {
                    req.expect_error = Some(rest.trim().to_string());
                } else if let Some(rest) = trimmed.strip_prefix("# @until $.") {
                    let (path, value) = rest.split_once("==").expect("`# @until $.path == value`");
                    req.until = Some((path.trim().to_string(), value.trim().to_string()));
                } else if let Some(rest) = trimmed.strip_prefix('@') {
                    let (k, v) = rest.split_once('=').expect("`@name = value`");
                    vars.insert(k.trim().to_string(), v.trim().to_string());
                } else if !trimmed.is_empty()
                    && !trimmed.starts_with('#')
                    && !trimmed.starts_with("//")
                {
                    let (method, url) = trimmed.split_once(' ').expect("`METHOD URL`");
                    req.method = method.to_string();
                    req.url = url.trim().to_string();
                    in_headers = true;
                }
            } else if in_headers {
                if trimmed.is_empty() {
                    in_headers = false;
                } else {
                    let (k, v) = trimmed.split_once(':').expect("`Header: value`");
                    req.headers
                        .push((k.trim().to_string(), v.trim().to_string()));
                }
            } else {
                body.push(line);
            }
        }
        req.body = body.join("\n").trim().to_string();
        if !req.method.is_empty() {
            requests.push(req);
        }
    }
    (vars, requests)
}

/// The value at `path` (`a.b.0.c`) in `json`.
fn at<'a>(json: &'a Value, path: &str) -> &'a Value {
    path.split('.')
        .fold(json, |v, part| match (v, part.parse::<usize>()) {
            (Value::Array(items), Ok(i)) => items.get(i).unwrap_or(&Value::Null),
            _ => &v[part],
        })
}

/// Replaces `{{var}}` and `{{name.response.body.$.path}}`.
fn substitute(
    text: &str,
    vars: &HashMap<String, String>,
    responses: &HashMap<String, Value>,
) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find("}}").expect("closing }}") + start;
        let key = rest[start + 2..end].trim();
        let value = if let Some((name, path)) = key.split_once(".response.body.$.") {
            let v = at(
                responses
                    .get(name)
                    .unwrap_or_else(|| panic!("no response named {name}")),
                path,
            );
            match v {
                Value::String(s) => s.clone(),
                Value::Null => panic!("{key} is null"),
                other => other.to_string(),
            }
        } else {
            vars.get(key)
                .unwrap_or_else(|| panic!("no variable {key}"))
                .clone()
        };
        out.push_str(&value);
        rest = &rest[end + 2..];
    }
    out.push_str(rest);
    out
}

async fn run_file(path: &std::path::Path) -> usize {
    // Top-ups (rest/billing.http) talk to localstripe when `scripts/test` started it.
    let stripe = std::env::var("PODIUM_TEST_STRIPE_URL").ok();
    let overrides: Vec<(&str, &str)> = match &stripe {
        Some(url) => vec![
            ("STRIPE_SECRET_KEY", "sk_test_rest"),
            ("STRIPE_API_BASE", url),
        ],
        None => Vec::new(),
    };
    let app = spawn_app_with(&overrides).await;
    app.seed().await;
    let (mut vars, requests) = parse(&std::fs::read_to_string(path).unwrap());
    vars.insert("baseUrl".into(), app.address.clone());
    let mut responses = HashMap::new();
    for req in &requests {
        let label = format!("{} / {}", path.display(), req.title);
        let url = substitute(&req.url, &vars, &responses);
        let body = substitute(&req.body, &vars, &responses);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let json = loop {
            let mut builder = app.client.request(req.method.parse().unwrap(), &url);
            for (k, v) in &req.headers {
                builder = builder.header(k, substitute(v, &vars, &responses));
            }
            let resp = builder
                .body(body.clone())
                .send()
                .await
                .unwrap_or_else(|e| panic!("{label}: {e}"));
            assert!(
                resp.status().is_success(),
                "{label}: HTTP {}",
                resp.status()
            );
            let json: Value = resp.json().await.unwrap_or_else(|e| panic!("{label}: {e}"));
            let Some((path, value)) = &req.until else {
                break json;
            };
            let now = at(&json, path);
            if now.as_str().map_or_else(|| now.to_string(), str::to_string) == *value {
                break json;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{label}: never {path} == {value}; last {json}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        };
        let code = json["errors"][0]["extensions"]["code"].as_str();
        match (&req.expect_error, code) {
            (None, None) => {}
            (Some(expected), Some(code)) if expected == code => {}
            (expected, _) => panic!("{label}: expected error {expected:?}, got {json}"),
        }
        if let Some(name) = &req.name {
            responses.insert(name.clone(), json);
        }
    }
    requests.len()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_request_in_rest_runs() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("rest");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "http"))
        .collect();
    files.sort();
    assert!(files.len() >= 2, "rest/ holds the request files");
    for file in files {
        let n = run_file(&file).await;
        assert!(n > 0, "{} has requests", file.display());
    }
}
