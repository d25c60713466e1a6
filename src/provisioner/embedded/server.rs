//! The HTTP front: the Kubernetes API paths a kube client uses, answered from the store;
//! watch and pod logs streamed (chunked), everything else a JSON object, list or `Status`.

use std::collections::VecDeque;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::web::{self, Bytes};
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, http::StatusCode};
use futures_util::stream;
use serde_json::{Value, json};
use tokio::sync::broadcast;
use tokio::time::Instant;

use super::apipath::{ApiPath, query_get, query_pairs};
use super::logs::LogLine;
use super::store::{MERGE_PATCH, Reply, Store};
use super::watch::{self, Filter, TooOld, WatchStream};

/// A watch without timeoutSeconds ends after this long (kube-apiserver's default range).
const DEFAULT_WATCH: Duration = Duration::from_secs(1800);

/// Binds 127.0.0.1 on a free port and returns the server (to spawn) and the port.
pub fn serve(store: Arc<Store>) -> std::io::Result<(Server, u16)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let store = web::Data::from(store);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(store.clone())
            .app_data(web::PayloadConfig::new(8 * 1024 * 1024))
            .default_service(web::to(handle))
    })
    .workers(2)
    // The embedding process owns the signals; this server stops when told.
    .disable_signals()
    .shutdown_timeout(1)
    .listen(listener)?
    .run();
    Ok((server, port))
}

fn reply(r: Reply) -> HttpResponse {
    HttpResponse::build(StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .content_type("application/json")
        .body(r.body.to_string())
}

async fn handle(req: HttpRequest, body: Bytes, store: web::Data<Store>) -> HttpResponse {
    let method = req.method().as_str().to_string();
    let query = req.query_string().to_string();
    match req.path() {
        "/version" => {
            return reply(Reply::ok(json!({
                "major": "1", "minor": "33", "gitVersion": "v1.33.0-podium-sim",
                "platform": "linux/amd64", "goVersion": "none (simulated by Podium)"
            })));
        }
        "/healthz" | "/livez" | "/readyz" => return HttpResponse::Ok().body("ok"),
        _ => {}
    }
    let Some(path) = ApiPath::parse(req.path()) else {
        return reply(Reply::error(
            404,
            "NotFound",
            "the server could not find the requested resource",
        ));
    };
    if path.resource == "deployments" && path.subresource.as_deref() == Some("scale") {
        return reply(scale(&store, &method, &path, &body).await);
    }
    match method.as_str() {
        "GET" => {
            match path.subresource.as_deref() {
                Some("log") if path.resource == "pods" => return logs(&store, &path, &query).await,
                Some("status") | None => {}
                Some(other) => {
                    return reply(Reply::error(
                        404,
                        "NotFound",
                        format!("the server could not find the requested resource ({other})"),
                    ));
                }
            }
            let pairs = query_pairs(&query);
            if path.name.is_none() && matches!(query_get(&pairs, "watch"), Some("true" | "1")) {
                return watch(&store, &path, &pairs).await;
            }
            reply(store.get(&path, &query).await)
        }
        "POST" | "PUT" | "PATCH" => {
            let ct = req
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok());
            reply(store.mutate(&method, &path, &query, ct, &body).await)
        }
        "DELETE" => reply(store.delete(&path, &query, &body).await),
        _ => reply(Reply::error(
            405,
            "MethodNotAllowed",
            format!("{method} is not supported"),
        )),
    }
}

/// The `scale` subresource of a Deployment (what `Api::patch_scale` and `kubectl scale` use):
/// an autoscaling/v1 Scale read from, and written to, the Deployment's replicas.
async fn scale(store: &Store, method: &str, path: &ApiPath, body: &[u8]) -> Reply {
    let deployment = ApiPath {
        subresource: None,
        ..path.clone()
    };
    match method {
        "GET" => {}
        "PUT" | "PATCH" => {
            let Ok(v) = serde_json::from_slice::<Value>(body) else {
                return Reply::error(400, "BadRequest", "the body is not JSON");
            };
            // A Scale (replace, merge or apply) or a JSON patch of /spec/replicas.
            let replicas = v["spec"]["replicas"].as_i64().or_else(|| {
                v.as_array()?
                    .iter()
                    .find(|op| op["path"] == "/spec/replicas")?["value"]
                    .as_i64()
            });
            let Some(replicas) = replicas.filter(|r| *r >= 0) else {
                return Reply::error(
                    422,
                    "Invalid",
                    "Scale is invalid: spec.replicas: Required value",
                );
            };
            let patch = json!({ "spec": { "replicas": replicas } }).to_string();
            let r = store
                .mutate(
                    "PATCH",
                    &deployment,
                    "",
                    Some(MERGE_PATCH),
                    patch.as_bytes(),
                )
                .await;
            if !r.is_success() {
                return r;
            }
        }
        _ => {
            return Reply::error(
                405,
                "MethodNotAllowed",
                format!("{method} is not allowed on scale"),
            );
        }
    }
    let d = store.get(&deployment, "").await;
    if !d.is_success() {
        return d;
    }
    let d = d.body;
    let selector: Vec<String> = d["spec"]["selector"]["matchLabels"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
        .collect();
    let m = &d["metadata"];
    Reply::ok(json!({
        "apiVersion": "autoscaling/v1", "kind": "Scale",
        "metadata": { "name": m["name"], "namespace": m["namespace"], "uid": m["uid"],
                      "resourceVersion": m["resourceVersion"], "creationTimestamp": m["creationTimestamp"] },
        "spec": { "replicas": d["spec"]["replicas"].as_i64().unwrap_or(1) },
        "status": { "replicas": d["status"]["replicas"].as_i64().unwrap_or(0), "selector": selector.join(",") },
    }))
}

async fn watch(store: &Store, path: &ApiPath, pairs: &[(String, String)]) -> HttpResponse {
    let filter = match Filter::from_query(path, pairs) {
        Ok(f) => f,
        Err(e) => return reply(Reply::error(400, "BadRequest", e)),
    };
    let timeout = query_get(pairs, "timeoutSeconds")
        .and_then(|s| s.parse().ok())
        .map_or(DEFAULT_WATCH, Duration::from_secs);
    let bookmarks = (query_get(pairs, "allowWatchBookmarks") == Some("true")).then(|| {
        (
            path.kind().unwrap_or("Unknown").to_string(),
            path.api_version(),
        )
    });
    let mut pending = VecDeque::new();
    let (rx, last_rv, done) = match query_get(pairs, "resourceVersion")
        .filter(|rv| !rv.is_empty() && *rv != "0")
    {
        None => {
            // No resourceVersion: the current state as ADDED events, then the changes.
            let (items, rx, rv) = store.list_and_subscribe(path, &filter).await;
            pending.extend(items.iter().map(|o| watch::line("ADDED", o)));
            if query_get(pairs, "sendInitialEvents") == Some("true") {
                // A streaming list (watcher's StreamingList): this bookmark ends it.
                let (kind, api_version) = (path.kind().unwrap_or("Unknown"), path.api_version());
                pending.push_back(watch::line(
                    "BOOKMARK",
                    &json!({ "kind": kind, "apiVersion": api_version, "metadata": {
                        "resourceVersion": rv.to_string(),
                        "annotations": { "k8s.io/initial-events-end": "true" } } }),
                ));
            }
            (rx, rv, false)
        }
        Some(rv) => {
            let Ok(rv) = rv.parse::<u64>() else {
                return reply(Reply::error(
                    400,
                    "BadRequest",
                    format!("invalid resourceVersion {rv}"),
                ));
            };
            match store.events.subscribe_after(rv) {
                Ok((replay, rx)) => {
                    let last = replay.last().map_or(rv, |e| e.rv.max(rv));
                    pending.extend(
                        replay
                            .iter()
                            .filter_map(|e| Some(watch::event_line(filter.view(e)?, e))),
                    );
                    (rx, last, false)
                }
                Err(TooOld) => {
                    pending.push_back(watch::gone_line(&format!("too old resource version: {rv}")));
                    (broadcast::channel(1).1, rv, true)
                }
            }
        }
    };
    let state = WatchStream {
        pending,
        rx,
        filter,
        last_rv,
        deadline: Instant::now() + timeout,
        bookmarks,
        done,
    };
    HttpResponse::Ok()
        .content_type("application/json")
        .streaming(stream::unfold(state, WatchStream::next_chunk))
}

/// `GET .../pods/{name}/log`: container, tailLines, follow, timestamps.
async fn logs(store: &Store, path: &ApiPath, query: &str) -> HttpResponse {
    let pairs = query_pairs(query);
    let pod_path = ApiPath {
        subresource: None,
        ..path.clone()
    };
    let pod = store.get(&pod_path, "").await;
    if !pod.is_success() {
        return reply(pod);
    }
    let (ns, name) = (
        path.namespace.clone().unwrap_or_default(),
        path.name.clone().unwrap_or_default(),
    );
    let pod = pod.body;
    let containers: Vec<String> = pod["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str().map(str::to_string))
        .collect();
    let container = match query_get(&pairs, "container").filter(|c| !c.is_empty()) {
        Some(c) if containers.iter().any(|n| n == c) => c.to_string(),
        Some(c) => {
            return reply(Reply::error(
                400,
                "BadRequest",
                format!("container {c} is not valid for pod {name}"),
            ));
        }
        None if containers.len() == 1 => containers[0].clone(),
        None => {
            return reply(Reply::error(
                400,
                "BadRequest",
                format!(
                    "a container name must be specified for pod {name}, choose one of: [{}]",
                    containers.join(" ")
                ),
            ));
        }
    };
    if !store.logs.has_lines(&ns, &name, &container) {
        let waiting = pod["status"]["containerStatuses"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|s| s["name"] == json!(container))
            .and_then(|s| s["state"]["waiting"]["reason"].as_str().map(str::to_string))
            .unwrap_or_else(|| "ContainerCreating".to_string());
        return reply(Reply::error(
            400,
            "BadRequest",
            format!("container \"{container}\" in pod \"{name}\" is waiting to start: {waiting}"),
        ));
    }
    let tail = query_get(&pairs, "tailLines").and_then(|t| t.parse().ok());
    let timestamps = query_get(&pairs, "timestamps") == Some("true");
    let follow = query_get(&pairs, "follow") == Some("true");
    let (lines, rx) = store.logs.read(&ns, &name, &container, tail, follow);
    let head: VecDeque<Bytes> = lines.iter().map(|l| l.render(timestamps)).collect();
    let Some(rx) = rx else {
        let text: Vec<u8> = head.into_iter().flat_map(|b| b.to_vec()).collect();
        return HttpResponse::Ok().content_type("text/plain").body(text);
    };
    // Following: the tail, then new lines of this container until the pod is deleted
    // (its log channel closes) or the client goes away (actix drops the stream).
    struct Follow {
        head: VecDeque<Bytes>,
        rx: broadcast::Receiver<Arc<LogLine>>,
        container: String,
        timestamps: bool,
    }
    let state = Follow {
        head,
        rx,
        container,
        timestamps,
    };
    let body = stream::unfold(state, |mut s| async move {
        if let Some(b) = s.head.pop_front() {
            return Some((Ok::<_, std::convert::Infallible>(b), s));
        }
        loop {
            match s.rx.recv().await {
                Ok(line) if line.container == s.container => {
                    let b = line.render(s.timestamps);
                    return Some((Ok(b), s));
                }
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    HttpResponse::Ok()
        .content_type("text/plain")
        .streaming(body)
}
