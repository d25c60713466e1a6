//! Where messages go: an SMTP server, or files (the embedded default).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use crate::config::MailSettings;

pub enum Transport {
    Smtp {
        smtp: AsyncSmtpTransport<Tokio1Executor>,
        /// A bound on one whole hand-over: lettre's own timeout covers connecting only.
        timeout: Duration,
    },
    /// One `.eml` file per message in this directory.
    Files(PathBuf),
}

/// Why a message was not handed over.
#[derive(Debug)]
pub enum SendError {
    /// Worth another try: the server is unreachable, busy, or answered 4xx.
    Transient(String),
    /// Retrying would not help: the server refused this message or its recipient (550-553).
    Permanent(String),
}

/// `PODIUM_SMTP_URL` in lettre's form: `smtp+starttls://` becomes `smtp://...?tls=required`.
/// `None` when the scheme is not one of ours.
pub fn smtp_url(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    // A query or a fragment could hide the `tls=required` we append (and with it STARTTLS).
    if rest.is_empty() || rest.contains(['?', '#']) {
        return None;
    }
    match scheme {
        "smtp" | "smtps" => Some(url.to_string()),
        "smtp+starttls" => Some(format!("smtp://{rest}?tls=required")),
        _ => None,
    }
}

/// The host of an SMTP URL (what its certificate must name).
fn smtp_host(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?']).next()?;
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = match host_port.strip_prefix('[') {
        Some(v6) => v6.split(']').next()?,
        None => host_port.split(':').next()?,
    };
    (!host.is_empty()).then(|| host.to_string())
}

impl Transport {
    pub fn from_settings(settings: &MailSettings) -> anyhow::Result<Self> {
        let Some(url) = &settings.smtp_url else {
            return Ok(Transport::Files(settings.dir.clone()));
        };
        let settings_url: &str = url;
        let url = smtp_url(url).context("PODIUM_SMTP_URL is not an SMTP URL")?;
        let mut smtp = AsyncSmtpTransport::<Tokio1Executor>::from_url(&url)
            // The URL holds the password: never put it in the error.
            .map_err(|_| anyhow::anyhow!("PODIUM_SMTP_URL could not be parsed"))?
            .timeout(Some(settings.smtp_timeout));
        if let Some(file) = &settings.smtp_ca_file {
            let pem = std::fs::read(file)
                .with_context(|| format!("reading PODIUM_SMTP_CA_FILE {}", file.display()))?;
            let roots = Certificate::from_pem(&pem)
                .map_err(|e| anyhow::anyhow!("PODIUM_SMTP_CA_FILE {}: {e}", file.display()))?;
            let host = smtp_host(&url).context("PODIUM_SMTP_URL has no host")?;
            let tls = TlsParameters::builder(host)
                .add_root_certificate(roots)
                .build()
                .map_err(|e| anyhow::anyhow!("TLS for PODIUM_SMTP_URL: {e}"))?;
            // The same TLS as the URL's scheme asks for, trusting the given roots too (the
            // settings refuse a CA file with plain `smtp://`).
            let scheme = settings_url.split_once("://").map_or("", |(s, _)| s);
            smtp = match scheme {
                "smtps" => smtp.tls(Tls::Wrapper(tls)),
                _ => smtp.tls(Tls::Required(tls)),
            };
        }
        Ok(Transport::Smtp {
            smtp: smtp.build(),
            timeout: settings.smtp_timeout,
        })
    }

    /// What the startup log says about it (no credentials).
    pub fn describe(&self) -> String {
        match self {
            Transport::Smtp { .. } => "SMTP (PODIUM_SMTP_URL)".into(),
            Transport::Files(dir) => format!("files under {}", dir.display()),
        }
    }

    /// Hands the message over; `name` keeps file names unique and sortable.
    pub async fn send(&self, message: &Message, name: &str) -> Result<(), SendError> {
        match self {
            Transport::Smtp { smtp, timeout } => {
                match tokio::time::timeout(*timeout, smtp.send(message.clone())).await {
                    Ok(Ok(_)) => Ok(()),
                    // Only a refusal of this message or recipient is final: a 5xx at the
                    // greeting or at AUTH (a rotated password, maintenance) would otherwise
                    // fail every message at once, so those are retried like an outage.
                    Ok(Err(e)) => match e.status().map(u16::from) {
                        Some(550..=553) => Err(SendError::Permanent(e.to_string())),
                        _ => Err(SendError::Transient(e.to_string())),
                    },
                    Err(_) => Err(SendError::Transient(format!(
                        "the mail server did not finish within {} s",
                        timeout.as_secs()
                    ))),
                }
            }
            Transport::Files(dir) => write_file(dir, name, &message.formatted())
                .await
                .map(|path| {
                    tracing::info!(path = %path.display(), "mail written to a file (no PODIUM_SMTP_URL)")
                })
                .map_err(|e| SendError::Transient(format!("{e:#}"))),
        }
    }
}

/// Writes `<dir>/<name>.eml` whole or not at all (a temporary file renamed into place), in a
/// directory only this user can read: messages hold one-time links.
async fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> anyhow::Result<PathBuf> {
    tokio::fs::create_dir_all(dir)
        .await
        .with_context(|| format!("creating {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = tokio::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).await;
    }
    let path = dir.join(format!("{name}.eml"));
    let partial = dir.join(format!(".{name}.eml.tmp"));
    {
        use tokio::io::AsyncWriteExt;
        let mut file = tokio::fs::File::create(&partial)
            .await
            .with_context(|| format!("creating {}", partial.display()))?;
        file.write_all(bytes)
            .await
            .with_context(|| format!("writing {}", partial.display()))?;
        // On disk before the message counts as sent.
        file.sync_all().await?;
    }
    tokio::fs::rename(&partial, &path)
        .await
        .with_context(|| format!("renaming to {}", path.display()))?;
    if let Ok(dir) = tokio::fs::File::open(dir).await {
        let _ = dir.sync_all().await;
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::smtp_url;

    #[test]
    fn the_host_is_what_the_certificate_must_name() {
        use super::smtp_host;
        assert_eq!(
            smtp_host("smtp://u:p@mail.example.com:587?tls=required").as_deref(),
            Some("mail.example.com")
        );
        assert_eq!(smtp_host("smtps://127.0.0.1").as_deref(), Some("127.0.0.1"));
        assert_eq!(smtp_host("smtps://[::1]:465").as_deref(), Some("::1"));
    }

    #[test]
    fn smtp_urls_take_our_three_schemes() {
        assert_eq!(
            smtp_url("smtp+starttls://u:p@mail.example.com:587").as_deref(),
            Some("smtp://u:p@mail.example.com:587?tls=required")
        );
        assert_eq!(
            smtp_url("smtps://mail.example.com").as_deref(),
            Some("smtps://mail.example.com")
        );
        assert_eq!(
            smtp_url("smtp://127.0.0.1:2525").as_deref(),
            Some("smtp://127.0.0.1:2525")
        );
        assert_eq!(smtp_url("http://mail.example.com"), None);
        assert_eq!(
            smtp_url("smtp+starttls://u:p#x@mail.example.com"),
            None,
            "a fragment would swallow tls=required"
        );
        assert_eq!(smtp_url("smtp://"), None);
    }
}
