//! `podium node-agent`: the reference client that runs on a worker node. It reads the
//! machine (cpu, load, memory, disk, kernel, OS image) and sends `nodeHeartbeat` every
//! interval, backing off while the server is unreachable and exiting with a clear
//! message when the server refuses its token.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::{Value, json};

pub struct AgentOptions {
    /// Base URL of the Podium server, e.g. `https://api.example.com`.
    pub server: String,
    pub token: String,
    pub interval: Duration,
    /// The filesystem whose use is reported as allocated storage.
    pub disk_path: PathBuf,
    /// Send one heartbeat and exit (for checks and scripts).
    pub once: bool,
}

const HEARTBEAT: &str = "mutation Heartbeat($input: NodeHeartbeatInput) { nodeHeartbeat(input: $input) { nodeId status nextHeartbeatInSeconds } }";

/// Why a heartbeat did not go through.
enum Failure {
    /// The server answered that this token is not welcome: retrying won't help.
    Refused(String),
    /// Nothing answers GraphQL at that URL (HTTP 404/405): a wrong --server.
    NotPodium(String),
    /// Network trouble or a server error: retry later.
    Transient(String),
}

/// Parses `10s`, `500ms`, `2m` or a plain number of seconds.
pub fn parse_interval(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (number, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map_or((s, "s"), |i| s.split_at(i));
    let n: u64 = number
        .parse()
        .map_err(|_| format!("not a duration: {s:?} (e.g. 10s, 500ms, 1m)"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        _ => return Err(format!("unknown unit in {s:?}: use ms, s or m")),
    };
    if d.is_zero() {
        return Err("the interval must be above zero".into());
    }
    Ok(d)
}

pub async fn run(opts: AgentOptions) -> anyhow::Result<()> {
    if !opts.token.starts_with(super::TOKEN_PREFIX) {
        bail!(
            "a node token starts with {:?}: pass the token registerWorkerNode returned",
            super::TOKEN_PREFIX
        );
    }
    let url = graphql_url(&opts.server);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .user_agent(concat!("podium-node-agent/", env!("CARGO_PKG_VERSION")))
        .build()?;
    let mut interval = opts.interval;
    let mut backoff = Duration::from_secs(1);
    tracing::info!(server = %opts.server, "node agent started");
    loop {
        let input = read_machine(&opts.disk_path);
        match send(&client, &url, &opts.token, input).await {
            Ok(ack) => {
                backoff = Duration::from_secs(1);
                let status = ack["status"].as_str().unwrap_or("?");
                tracing::info!(
                    node_id = ack["nodeId"].as_str().unwrap_or("?"),
                    status,
                    "heartbeat acknowledged"
                );
                if let Some(next) = ack["nextHeartbeatInSeconds"].as_u64().filter(|n| *n > 0) {
                    // Never slower than the server asks (it judges staleness); faster if the flag says so.
                    interval = opts.interval.min(Duration::from_secs(next));
                }
                if opts.once {
                    return Ok(());
                }
            }
            Err(Failure::Refused(why)) => {
                bail!(
                    "the server refused this node's token ({why}): check --token, or rotate it with rotateWorkerNodeToken"
                );
            }
            Err(Failure::NotPodium(why)) => {
                bail!(
                    "{why} at {url}: --server must be the Podium server's base URL (e.g. https://podium.example.com) or its /graphql URL"
                );
            }
            Err(Failure::Transient(why)) => {
                tracing::warn!(error = %why, retry_in = ?backoff, "heartbeat failed; retrying");
                if opts.once {
                    bail!("heartbeat failed: {why}");
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = tokio::signal::ctrl_c() => return Ok(()),
                }
                backoff = (backoff * 2).min(Duration::from_secs(60));
                continue;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = tokio::signal::ctrl_c() => {
                tracing::info!("node agent stopped");
                return Ok(());
            }
        }
    }
}

async fn send(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    input: Value,
) -> Result<Value, Failure> {
    let response = client
        .post(url)
        .bearer_auth(token)
        .json(&json!({ "query": HEARTBEAT, "variables": { "input": input } }))
        .send()
        .await
        .map_err(|e| Failure::Transient(e.to_string()))?;
    let status = response.status();
    if matches!(status.as_u16(), 404 | 405) {
        return Err(Failure::NotPodium(format!("HTTP {status}")));
    }
    let body: Value = response
        .json()
        .await
        .map_err(|e| Failure::Transient(format!("HTTP {status}: {e}")))?;
    if let Some(error) = body["errors"].get(0) {
        let message = error["message"].as_str().unwrap_or("error").to_string();
        return match error["extensions"]["code"].as_str() {
            Some("UNAUTHENTICATED" | "FORBIDDEN") => Err(Failure::Refused(message)),
            _ => Err(Failure::Transient(message)),
        };
    }
    Ok(body["data"]["nodeHeartbeat"].clone())
}

/// What this machine looks like now; anything unreadable is left out.
pub fn read_machine(disk_path: &Path) -> Value {
    let mut input = serde_json::Map::new();
    input.insert("isReady".into(), json!(true));
    if let Some(load) = std::fs::read_to_string("/proc/loadavg").ok().and_then(|s| {
        s.split_whitespace()
            .next()
            .and_then(|l| l.parse::<f64>().ok())
    }) {
        input.insert(
            "allocatedCpu".into(),
            json!((load * 1000.0).round() / 1000.0),
        );
    }
    if let Some((total, available)) = meminfo() {
        input.insert(
            "allocatedMemoryMb".into(),
            json!((total - available) / 1024),
        );
    }
    if let Some(used) = disk_used_mb(disk_path) {
        input.insert("allocatedStorageMb".into(), json!(used));
    }
    if let Ok(kernel) = std::fs::read_to_string("/proc/sys/kernel/osrelease") {
        input.insert("kernelVersion".into(), json!(kernel.trim()));
    }
    if let Some(os) = os_image() {
        input.insert("osImage".into(), json!(os));
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    input.insert(
        "labels".into(),
        json!({ "podium.io/agent": env!("CARGO_PKG_VERSION"), "podium.io/cpu-cores": cores.to_string() }),
    );
    Value::Object(input)
}

/// (MemTotal, MemAvailable) in KiB.
fn meminfo() -> Option<(i64, i64)> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<i64>().ok())
    };
    Some((field("MemTotal:")?, field("MemAvailable:")?))
}

fn disk_used_mb(path: &Path) -> Option<i64> {
    let cpath = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid NUL-terminated path and a zeroed out-struct.
    if unsafe { libc::statvfs(cpath.as_ptr(), &mut stat) } != 0 {
        return None;
    }
    let block = stat.f_frsize as i64;
    let used = (stat.f_blocks as i64 - stat.f_bfree as i64) * block;
    Some(used / (1024 * 1024))
}

fn os_image() -> Option<String> {
    let text = std::fs::read_to_string("/etc/os-release").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_string())
}

/// The GraphQL endpoint for `--server`, given as the base URL or as the `/graphql` URL.
pub fn graphql_url(server: &str) -> String {
    let base = server.trim().trim_end_matches('/');
    if base.ends_with("/graphql") {
        base.to_string()
    } else {
        format!("{base}/graphql")
    }
}

/// Checks the flags before starting.
pub fn options(
    server: String,
    token: String,
    interval: &str,
    disk_path: PathBuf,
    once: bool,
) -> anyhow::Result<AgentOptions> {
    if !(server.starts_with("http://") || server.starts_with("https://")) {
        bail!("--server must be an http:// or https:// URL, got {server:?}");
    }
    let interval = parse_interval(interval)
        .map_err(anyhow::Error::msg)
        .context("--interval")?;
    Ok(AgentOptions {
        server,
        token,
        interval,
        disk_path,
        once,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals() {
        assert_eq!(parse_interval("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_interval("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_interval("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_interval("5").unwrap(), Duration::from_secs(5));
        assert!(parse_interval("0s").is_err());
        assert!(parse_interval("ten").is_err());
    }

    #[test]
    fn the_server_is_a_base_url_or_the_graphql_url() {
        for server in [
            "https://podium.example.com",
            "https://podium.example.com/",
            "https://podium.example.com/graphql",
            "https://podium.example.com/graphql/",
        ] {
            assert_eq!(graphql_url(server), "https://podium.example.com/graphql");
        }
        assert_eq!(
            graphql_url("http://10.0.0.1:8080/podium"),
            "http://10.0.0.1:8080/podium/graphql"
        );
    }

    #[test]
    fn reads_this_machine() {
        let v = read_machine(Path::new("/"));
        assert_eq!(v["isReady"], true);
        assert!(v["allocatedMemoryMb"].as_i64().unwrap() > 0);
        assert!(v["kernelVersion"].is_string());
    }
}
