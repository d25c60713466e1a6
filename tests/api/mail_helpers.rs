//! Mail as the tests receive it. `scripts/test` runs one aiosmtpd (PyPI) on loopback that
//! writes what it accepts into a Maildir (`PODIUM_TEST_SMTP_URL`, `PODIUM_TEST_MAILDIR`);
//! tests that stop and start a mail server run their own. Each test reads only its own
//! recipients' messages.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A message as delivered.
#[derive(Debug, Clone)]
pub struct Received {
    /// The envelope recipients (aiosmtpd's `X-RcptTo`), or the `To` header of a file.
    pub to: String,
    pub subject: String,
    pub message_id: String,
    pub text: String,
    pub html: String,
}

impl Received {
    /// The first URL in the plain text that contains `path`.
    pub fn link(&self, path: &str) -> String {
        self.text
            .split_whitespace()
            .find(|w| w.starts_with("http") && w.contains(path))
            .unwrap_or_else(|| panic!("no {path} link in: {}", self.text))
            .to_string()
    }

    /// The `token` query parameter of the link to `path`.
    pub fn token(&self, path: &str) -> String {
        let link = self.link(path);
        link.split_once("token=")
            .unwrap_or_else(|| panic!("no token in {link}"))
            .1
            .to_string()
    }
}

fn parse(bytes: &[u8]) -> Received {
    let mail = mailparse::parse_mail(bytes).expect("a parseable message");
    let header = |name: &str| {
        mail.headers
            .iter()
            .find(|h| h.get_key_ref().eq_ignore_ascii_case(name))
            .map(|h| h.get_value())
            .unwrap_or_default()
    };
    let part = |mime: &str| {
        mail.subparts
            .iter()
            .find(|p| p.ctype.mimetype == mime)
            .map(|p| p.get_body().expect("a decodable body"))
            .unwrap_or_default()
    };
    let rcpt = header("X-RcptTo");
    Received {
        to: if rcpt.is_empty() { header("To") } else { rcpt },
        subject: header("Subject"),
        message_id: header("Message-ID"),
        text: part("text/plain"),
        html: part("text/html"),
    }
}

/// Messages in a directory: a Maildir (its `new/`) or the file transport's `.eml` files.
pub fn messages_in(dir: &Path) -> Vec<Received> {
    let new = dir.join("new");
    let dir = if new.is_dir() { new } else { dir.to_path_buf() };
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file() && !p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .collect();
    files.sort();
    files
        .iter()
        .filter_map(|p| std::fs::read(p).ok())
        .map(|bytes| parse(&bytes))
        .collect()
}

/// Where messages arrive.
#[derive(Clone)]
pub struct Mailbox {
    dir: PathBuf,
}

impl Mailbox {
    /// The shared aiosmtpd's Maildir.
    pub fn shared() -> Self {
        Mailbox {
            dir: std::env::var("PODIUM_TEST_MAILDIR")
                .expect("PODIUM_TEST_MAILDIR is not set: run the tests with ./scripts/test")
                .into(),
        }
    }

    pub fn at(dir: impl Into<PathBuf>) -> Self {
        Mailbox { dir: dir.into() }
    }

    /// Everything delivered to `to` so far.
    pub fn to(&self, to: &str) -> Vec<Received> {
        messages_in(&self.dir)
            .into_iter()
            .filter(|m| {
                m.to.split([',', ' ', '<', '>', '[', ']', '\''])
                    .any(|address| address.eq_ignore_ascii_case(to))
            })
            .collect()
    }

    /// The first message to `to` whose subject contains `subject`, waiting up to 30 s.
    pub async fn wait_for(&self, to: &str, subject: &str) -> Received {
        self.wait_within(to, subject, Duration::from_secs(30)).await
    }

    pub async fn wait_within(&self, to: &str, subject: &str, within: Duration) -> Received {
        let deadline = Instant::now() + within;
        loop {
            if let Some(m) = self
                .to(to)
                .into_iter()
                .find(|m| m.subject.contains(subject))
            {
                return m;
            }
            if Instant::now() > deadline {
                panic!(
                    "no message to {to} with {subject:?} within {within:?}; it has: {:?}",
                    self.to(to).iter().map(|m| &m.subject).collect::<Vec<_>>()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A test server that sends its mail to `smtp_url`, with `extra` settings.
pub async fn app_mailing_to(smtp_url: &str, extra: &[(&str, &str)]) -> crate::helpers::TestApp {
    let mut overrides = vec![("PODIUM_SMTP_URL", smtp_url)];
    overrides.extend_from_slice(extra);
    crate::helpers::spawn_app_with(&overrides).await
}

/// The shared aiosmtpd's URL.
pub fn shared_smtp_url() -> String {
    std::env::var("PODIUM_TEST_SMTP_URL")
        .expect("PODIUM_TEST_SMTP_URL is not set: run the tests with ./scripts/test")
}

/// An aiosmtpd of the test's own, which it can stop and start again on the same port.
pub struct SmtpServer {
    port: u16,
    dir: PathBuf,
    child: Option<std::process::Child>,
    /// aiosmtpd's TLS arguments, when it speaks TLS.
    tls: Vec<String>,
    /// The user and password it requires (`tests/fixtures/smtp_auth_server.py`, STARTTLS).
    auth: Option<(String, String)>,
}

impl SmtpServer {
    /// A port nobody listens on yet, and a Maildir; not started.
    pub fn new() -> Self {
        let port = crate::helpers::unused_port();
        // aiosmtpd makes the Maildir (it refuses one that exists without its subdirectories).
        let dir =
            std::env::temp_dir().join(format!("podium-smtp-{}", uuid::Uuid::new_v4().simple()));
        SmtpServer {
            port,
            dir,
            child: None,
            tls: Vec::new(),
            auth: None,
        }
    }

    /// Makes it require this user and password, after STARTTLS (call `use_tls(false)` too).
    pub fn require_login(&mut self, user: &str, password: &str) {
        self.auth = Some((user.into(), password.into()));
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Makes it speak TLS (from the start with `implicit`, else STARTTLS, which it then
    /// requires before any mail) with a certificate for 127.0.0.1 issued by a CA of its
    /// own; returns that CA's PEM file.
    pub fn use_tls(&mut self, implicit: bool) -> PathBuf {
        let certs = self.dir.with_extension("certs");
        std::fs::create_dir_all(&certs).unwrap();
        let openssl = |args: &[&str]| {
            let out = std::process::Command::new("openssl")
                .args(args)
                .current_dir(&certs)
                .output()
                .expect("running openssl");
            assert!(out.status.success(), "openssl {args:?}: {out:?}");
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        openssl(
            &[
                &["req", "-x509"][..],
                &ec,
                &[
                    "-keyout",
                    "ca.key",
                    "-out",
                    "ca.pem",
                    "-days",
                    "2",
                    "-subj",
                    "/CN=Podium test CA",
                ],
            ]
            .concat(),
        );
        openssl(
            &[
                &["req"][..],
                &ec,
                &[
                    "-keyout",
                    "key.pem",
                    "-out",
                    "server.csr",
                    "-subj",
                    "/CN=127.0.0.1",
                ],
            ]
            .concat(),
        );
        std::fs::write(
            certs.join("server.ext"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "cert.pem",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ]);
        let (cert, key) = if implicit {
            ("--smtpscert", "--smtpskey")
        } else {
            ("--tlscert", "--tlskey")
        };
        self.tls = vec![
            cert.into(),
            certs.join("cert.pem").to_string_lossy().into_owned(),
            key.into(),
            certs.join("key.pem").to_string_lossy().into_owned(),
        ];
        certs.join("ca.pem")
    }

    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    pub fn mailbox(&self) -> Mailbox {
        Mailbox::at(&self.dir)
    }

    /// Starts it and waits until it listens.
    pub async fn start(&mut self) {
        let python = std::env::var("PODIUM_TEST_PYTHON")
            .expect("PODIUM_TEST_PYTHON is not set: run the tests with ./scripts/test");
        let mut command = std::process::Command::new(python);
        match &self.auth {
            None => command
                .args(["-m", "aiosmtpd", "-n", "-l"])
                .arg(format!("127.0.0.1:{}", self.port))
                .args(&self.tls)
                .args(["-c", "aiosmtpd.handlers.Mailbox"])
                .arg(&self.dir),
            Some((user, password)) => command
                .arg(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/tests/fixtures/smtp_auth_server.py"
                ))
                .arg(self.port.to_string())
                .arg(&self.dir)
                .args([user, password])
                .args([&self.tls[1], &self.tls[3]]),
        };
        let child = command
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("starting aiosmtpd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .is_err()
        {
            assert!(
                Instant::now() < deadline,
                "aiosmtpd did not listen within 20 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kills it: connections are refused until it starts again.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
        let _ = std::fs::remove_dir_all(self.dir.with_extension("certs"));
    }
}

/// One outbox row, as the database holds it.
#[derive(diesel::QueryableByName, Debug, Clone)]
pub struct OutboxRow {
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    pub id: uuid::Uuid,
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub template: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub status: String,
    #[diesel(sql_type = diesel::sql_types::Integer)]
    pub attempts: i32,
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    pub last_error: Option<String>,
    #[diesel(sql_type = diesel::sql_types::Bool)]
    pub sealed: bool,
}

/// The outbox rows addressed to `recipient`, oldest first.
pub async fn outbox_to(app: &crate::helpers::TestApp, recipient: &str) -> Vec<OutboxRow> {
    use diesel_async::RunQueryDsl;
    let mut conn = app.state.pool.get().await.unwrap();
    diesel::sql_query(
        "SELECT id, template, status, attempts, last_error, secret IS NOT NULL AS sealed
         FROM email_outbox WHERE recipient = lower($1) ORDER BY created_at, id",
    )
    .bind::<diesel::sql_types::Text, _>(recipient)
    .load(&mut conn)
    .await
    .unwrap()
}

/// Waits until every `account.mail_request` job (the lookups behind reset and
/// verification requests) has run.
pub async fn mail_requests_done(app: &crate::helpers::TestApp) {
    crate::helpers::eventually("the account mail requests to be handled", || async {
        use diesel_async::RunQueryDsl;
        #[derive(diesel::QueryableByName)]
        struct Pending {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        let mut conn = app.state.pool.get().await.unwrap();
        let pending: Pending = diesel::sql_query(
            "SELECT count(*) AS n FROM jobs WHERE kind = 'account.mail_request' AND status <> 'SUCCEEDED'",
        )
        .get_result(&mut conn)
        .await
        .unwrap();
        pending.n == 0
    })
    .await;
}

/// Runs one statement against the app's database.
pub async fn sql(app: &crate::helpers::TestApp, statement: &str) {
    use diesel_async::RunQueryDsl;
    let mut conn = app.state.pool.get().await.unwrap();
    diesel::sql_query(statement)
        .execute(&mut conn)
        .await
        .unwrap();
}

/// The `n` column of a `SELECT count(*) AS n ...`.
pub async fn sql_count(app: &crate::helpers::TestApp, query: &str) -> i64 {
    use diesel_async::RunQueryDsl;
    #[derive(diesel::QueryableByName)]
    struct Counted {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let mut conn = app.state.pool.get().await.unwrap();
    diesel::sql_query(query)
        .get_result::<Counted>(&mut conn)
        .await
        .unwrap()
        .n
}

/// Waits (up to 20 s) until a message of `template` to `to` waits for another try after one
/// that failed saying `error`.
pub async fn waiting_after_error(
    app: &crate::helpers::TestApp,
    to: &str,
    template: &str,
    error: &str,
) {
    crate::helpers::eventually_within(
        &format!("a {template} to {to} waiting after {error:?}"),
        Duration::from_secs(20),
        || async {
            outbox_to(app, to).await.iter().any(|r| {
                r.template == template
                    && r.status == "QUEUED"
                    && r.attempts >= 1
                    && r.last_error.as_deref().is_some_and(|e| e.contains(error))
            })
        },
    )
    .await;
}

/// Waits until every message to `to` is marked SENT (which follows the server's acceptance).
pub async fn all_sent(app: &crate::helpers::TestApp, to: &str) {
    crate::helpers::eventually(&format!("every message to {to} SENT"), || async {
        outbox_to(app, to).await.iter().all(|r| r.status == "SENT")
    })
    .await;
}
