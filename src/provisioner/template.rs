//! A service's environment template, rendered for one instance: `${host}` is the
//! instance's host, `${secret:N}` a generated secret of N characters. A value holding a
//! secret keeps what was generated the first time (read back from the instance's Secret),
//! so re-applying never changes a password under a running app.

use std::collections::BTreeMap;

use rand::RngExt;

const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

pub fn render(
    template: &serde_json::Value,
    host: &str,
    existing: Option<&BTreeMap<String, String>>,
) -> BTreeMap<String, String> {
    let Some(vars) = template.as_object() else {
        return BTreeMap::new();
    };
    vars.iter()
        .filter_map(|(key, value)| Some((key, value.as_str()?)))
        .map(|(key, value)| {
            let kept = existing
                .and_then(|e| e.get(key))
                .filter(|_| value.contains("${secret:"));
            let rendered = match kept {
                Some(kept) => kept.clone(),
                None => fill(value, host),
            };
            (key.clone(), rendered)
        })
        .collect()
}

/// Replaces each `${...}` in `value`; placeholders Podium doesn't provide (a database it
/// does not run) become empty.
fn fill(value: &str, host: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let Some(len) = rest[start..].find('}') else {
            out.push_str(&rest[start..]);
            return out;
        };
        let name = &rest[start + 2..start + len];
        if name == "host" {
            out.push_str(host);
        } else if let Some(n) = name.strip_prefix("secret:") {
            out.push_str(&secret(n.parse().unwrap_or(32).clamp(8, 128)));
        }
        rest = &rest[start + len + 1..];
    }
    out.push_str(rest);
    out
}

fn secret(len: usize) -> String {
    let mut rng = rand::rng();
    (0..len)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn hosts_and_secrets_are_filled_and_secrets_kept() {
        let t = json!({ "URL": "https://${host}/", "KEY": "${secret:32}", "DB": "${db_host}" });
        let first = render(&t, "a.example.com", None);
        assert_eq!(first["URL"], "https://a.example.com/");
        assert_eq!(first["KEY"].len(), 32);
        assert_eq!(first["DB"], "");
        let again = render(&t, "a.example.com", Some(&first));
        assert_eq!(again["KEY"], first["KEY"], "a generated secret is kept");
        assert_ne!(render(&t, "a.example.com", None)["KEY"], first["KEY"]);
    }
}
