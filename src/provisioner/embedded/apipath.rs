//! Parsing of Kubernetes API paths (`/api/v1/namespaces/ns/pods/name/log`, ...) into their
//! parts: the front needs them to route watch, logs, namespaces and cascades, and to key
//! watch events by collection.

/// The store keeps Namespaces under this alias resource: kube-fake-client's path parser
/// reads `/api/v1/namespaces/{name}` as "namespace {name}, no resource" and rejects it, so
/// Namespace objects are unreachable under their real path (see `store::namespace_alias`).
pub const NAMESPACE_ALIAS: &str = "podium-sim-namespaces";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiPath {
    /// "/api/v1" or "/apis/{group}/{version}".
    pub prefix: String,
    pub namespace: Option<String>,
    /// Lowercase plural ("pods", "deployments", "namespaces").
    pub resource: String,
    pub name: Option<String>,
    /// "status", "log", ... after the name.
    pub subresource: Option<String>,
}

impl ApiPath {
    /// Parses a path (without query). `None` when it names no resource (discovery paths,
    /// garbage): the front answers those with a 404 Status.
    pub fn parse(path: &str) -> Option<ApiPath> {
        let parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let (prefix, rest) = match parts.as_slice() {
            ["api", v, rest @ ..] => (format!("/api/{v}"), rest),
            ["apis", g, v, rest @ ..] => (format!("/apis/{g}/{v}"), rest),
            _ => return None,
        };
        let owned = |s: &&str| s.to_string();
        let (namespace, resource, name, subresource) = match rest {
            // Namespaces themselves: the collection, one namespace, its status.
            ["namespaces"] => (None, "namespaces", None, None),
            ["namespaces", n] => (None, "namespaces", Some(n), None),
            ["namespaces", n, sub @ ("status" | "finalize")] => {
                (None, "namespaces", Some(n), Some(sub))
            }
            ["namespaces", ns, r, tail @ ..] if tail.len() <= 2 => {
                (Some(ns), *r, tail.first(), tail.get(1))
            }
            [r, tail @ ..] if *r != "namespaces" && tail.len() <= 2 => {
                (None, *r, tail.first(), tail.get(1))
            }
            _ => return None,
        };
        Some(ApiPath {
            prefix,
            namespace: namespace.map(owned),
            resource: resource.to_string(),
            name: name.map(owned),
            subresource: subresource.map(owned),
        })
    }

    /// The all-namespaces collection ("/api/v1/pods"): what watch events are keyed by.
    pub fn collection(&self) -> String {
        format!("{}/{}", self.prefix, self.resource)
    }

    /// ("apps", "v1"); the core group is "".
    pub fn group_version(&self) -> (&str, &str) {
        let mut parts = self.prefix.split('/').filter(|s| !s.is_empty()).skip(1);
        match (parts.next(), parts.next()) {
            (Some(g), Some(v)) => (g, v),
            (Some(v), None) => ("", v),
            _ => ("", ""),
        }
    }

    /// "v1", "apps/v1".
    pub fn api_version(&self) -> String {
        match self.group_version() {
            ("", v) => v.to_string(),
            (g, v) => format!("{g}/{v}"),
        }
    }

    /// The Kind of the resource, when kube-fake-client's discovery knows it.
    pub fn kind(&self) -> Option<&'static str> {
        let (g, v) = self.group_version();
        kube_fake_client::discovery::Discovery::plural_to_kind(g, v, &self.resource)
    }

    pub fn is_namespace_kind(&self) -> bool {
        self.prefix == "/api/v1" && self.resource == "namespaces"
    }

    /// The path the fake store understands (namespaces under their alias).
    pub fn store_path(&self) -> String {
        let resource = if self.is_namespace_kind() {
            NAMESPACE_ALIAS
        } else {
            &self.resource
        };
        self.path_with(resource)
    }

    /// This path with `resource` in the resource's place.
    fn path_with(&self, resource: &str) -> String {
        let mut p = self.prefix.clone();
        if let Some(ns) = &self.namespace {
            p.push_str("/namespaces/");
            p.push_str(ns);
        }
        p.push('/');
        p.push_str(resource);
        if let Some(n) = &self.name {
            p.push('/');
            p.push_str(n);
        }
        if let Some(s) = &self.subresource {
            p.push('/');
            p.push_str(s);
        }
        p
    }

    /// The same path without name and subresource (the collection in its namespace).
    pub fn list_path(&self) -> ApiPath {
        ApiPath {
            name: None,
            subresource: None,
            ..self.clone()
        }
    }

    /// The same object in `collection` form, for a given namespace and name.
    pub fn object(collection: &str, namespace: Option<&str>, name: &str) -> Option<ApiPath> {
        let mut p = ApiPath::parse(collection)?;
        p.namespace = namespace.map(str::to_string);
        p.name = Some(name.to_string());
        Some(p)
    }

    /// The public path ("/api/v1/namespaces/ns/pods/name").
    pub fn public_path(&self) -> String {
        self.path_with(&self.resource)
    }
}

/// Decoded query parameters, in order.
pub fn query_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|s| !s.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k), decode(v))
        })
        .collect()
}

pub fn query_get<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// Percent-decoding (and '+' as space) of one query component.
fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_parse_into_their_parts() {
        let p = ApiPath::parse("/api/v1/namespaces/ns/pods/web-1/log").unwrap();
        assert_eq!(p.namespace.as_deref(), Some("ns"));
        assert_eq!(p.resource, "pods");
        assert_eq!(p.name.as_deref(), Some("web-1"));
        assert_eq!(p.subresource.as_deref(), Some("log"));
        assert_eq!(p.collection(), "/api/v1/pods");

        let n = ApiPath::parse("/api/v1/namespaces/team-a").unwrap();
        assert!(n.is_namespace_kind());
        assert_eq!(n.name.as_deref(), Some("team-a"));
        assert_eq!(n.store_path(), "/api/v1/podium-sim-namespaces/team-a");

        let d = ApiPath::parse("/apis/apps/v1/deployments").unwrap();
        assert_eq!(d.namespace, None);
        assert_eq!(d.collection(), "/apis/apps/v1/deployments");
        assert_eq!(d.api_version(), "apps/v1");
        assert_eq!(d.kind(), Some("Deployment"));
        assert_eq!(n.api_version(), "v1");
        assert!(ApiPath::parse("/apis").is_none());
        assert!(ApiPath::parse("/api/v1/namespaces/a/pods/b/c/d").is_none());
    }

    #[test]
    fn queries_are_decoded() {
        let q = query_pairs("labelSelector=app%3Dweb%2Ctier&watch=1&x");
        assert_eq!(query_get(&q, "labelSelector"), Some("app=web,tier"));
        assert_eq!(query_get(&q, "watch"), Some("1"));
        assert_eq!(query_get(&q, "x"), Some(""));
    }
}
