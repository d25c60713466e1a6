//! The embedded default's private PostgreSQL cluster, run from the system's server
//! binaries in `<data dir>/postgres`: created on first start, reused later, stopped on
//! shutdown. PostgreSQL refuses to run as root, so as root the server runs as the
//! `postgres` user, which must be able to reach the data directory.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{Context, bail};
use rand::Rng;

const SUPERUSER: &str = "podium";
const DATABASE: &str = "podium";
const RUN_AS_WHEN_ROOT: &str = "postgres";

#[derive(Debug)]
pub struct EmbeddedPostgres {
    bin_dir: PathBuf,
    data_dir: PathBuf,
    run_as: Option<(u32, u32)>,
    port: u16,
    password: String,
    /// False when a server was already running on this data directory: we leave it running.
    owned: bool,
    /// True when this start created the cluster (first start: seed the demo data).
    pub created: bool,
}

impl EmbeddedPostgres {
    /// Creates (first time) and starts the cluster, and makes sure the `podium` database exists.
    pub async fn start(root: &Path) -> anyhow::Result<Self> {
        let root = root.to_path_buf();
        let pg = tokio::task::spawn_blocking(move || Self::start_blocking(&root)).await??;
        pg.ensure_database().await?;
        Ok(pg)
    }

    pub fn database_url(&self) -> String {
        self.url_for(DATABASE)
    }

    fn url_for(&self, database: &str) -> String {
        format!(
            "postgres://{SUPERUSER}:{}@127.0.0.1:{}/{database}",
            self.password, self.port
        )
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Stops the server if this process started it.
    pub async fn stop(&self) {
        if !self.owned {
            return;
        }
        let data = self.data_dir.display().to_string();
        let bin = self.bin_dir.join("pg_ctl");
        let run_as = self.run_as;
        let result = tokio::task::spawn_blocking(move || {
            command(&bin, run_as)
                .args(["-D", &data, "-m", "fast", "-w", "-t", "60", "stop"])
                .output()
        })
        .await;
        match result {
            Ok(Ok(out)) if out.status.success() => tracing::info!("embedded PostgreSQL stopped"),
            Ok(Ok(out)) => {
                tracing::warn!(output = %describe(&out), "stopping embedded PostgreSQL failed")
            }
            other => tracing::warn!(?other, "stopping embedded PostgreSQL failed"),
        }
    }

    fn start_blocking(root: &Path) -> anyhow::Result<Self> {
        let bin_dir = find_bin_dir()?;
        std::fs::create_dir_all(root)
            .with_context(|| format!("creating the data directory {}", root.display()))?;
        let root = std::fs::canonicalize(root)?;
        let data_dir = root.join("postgres");
        let run_as = if unsafe { libc::geteuid() } == 0 {
            Some(lookup_user(RUN_AS_WHEN_ROOT).with_context(|| {
                format!(
                    "running as root: PostgreSQL refuses to run as root and there is no `{RUN_AS_WHEN_ROOT}` user \
                     to run it as; create one (useradd --system {RUN_AS_WHEN_ROOT}), run Podium as an unprivileged \
                     user, or set DATABASE_URL"
                )
            })?)
        } else {
            None
        };

        let password_file = root.join("postgres.password");
        let initialized = data_dir.join("PG_VERSION").exists();
        let password = if initialized {
            std::fs::read_to_string(&password_file)
                .with_context(|| format!("reading {}", password_file.display()))?
                .trim()
                .to_string()
        } else {
            let password = random_token(32);
            write_private(&password_file, &password)?;
            password
        };

        if !data_dir.exists() {
            std::fs::create_dir(&data_dir)?;
        }
        std::fs::set_permissions(&data_dir, std::fs::Permissions::from_mode(0o700))?;
        if let Some((uid, gid)) = run_as {
            chown(&data_dir, uid, gid)?;
        }
        check_reachable(&data_dir, run_as)?;

        let mut pg = EmbeddedPostgres {
            bin_dir,
            data_dir,
            run_as,
            port: 0,
            password,
            owned: true,
            created: false,
        };
        if !initialized {
            if let Err(e) = pg.initdb(&root) {
                // Leave no half-made cluster behind: the next start begins afresh.
                let _ = std::fs::remove_dir_all(&pg.data_dir);
                return Err(e);
            }
            pg.created = true;
        }
        if let Some(port) = pg.running_port() {
            tracing::warn!(port, "embedded PostgreSQL was already running; reusing it");
            pg.port = port;
            pg.owned = false;
        } else {
            pg.port = free_port()?;
            pg.pg_ctl_start()?;
        }
        Ok(pg)
    }

    fn initdb(&self, root: &Path) -> anyhow::Result<()> {
        tracing::info!(dir = %self.data_dir.display(), "creating the embedded PostgreSQL cluster");
        // initdb reads the superuser's password from a file the server's user can read.
        let pwfile = root.join(".initdb-password");
        write_private(&pwfile, &self.password)?;
        if let Some((uid, gid)) = self.run_as {
            chown(&pwfile, uid, gid)?;
        }
        let out = command(&self.bin_dir.join("initdb"), self.run_as)
            .arg("-D")
            .arg(&self.data_dir)
            .args(["-U", SUPERUSER, "-E", "UTF8", "--no-locale"])
            .args(["--auth-host=scram-sha-256", "--auth-local=scram-sha-256"])
            .arg(format!("--pwfile={}", pwfile.display()))
            .output();
        let _ = std::fs::remove_file(&pwfile);
        let out = out.context("running initdb")?;
        if !out.status.success() {
            bail!("initdb failed: {}", describe(&out));
        }
        // Loopback TCP only: no Unix socket in a shared directory.
        let mut conf = std::fs::OpenOptions::new()
            .append(true)
            .open(self.data_dir.join("postgresql.conf"))?;
        writeln!(
            conf,
            "\n# Podium embedded default\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = ''"
        )?;
        Ok(())
    }

    fn pg_ctl_start(&self) -> anyhow::Result<()> {
        let log = self.data_dir.join("server.log");
        let out = command(&self.bin_dir.join("pg_ctl"), self.run_as)
            .arg("-D")
            .arg(&self.data_dir)
            .arg("-l")
            .arg(&log)
            .args(["-w", "-t", "60", "-o"])
            .arg(format!("-p {}", self.port))
            .arg("start")
            .output()
            .context("running pg_ctl start")?;
        if !out.status.success() {
            let tail = std::fs::read_to_string(&log)
                .map(|s| {
                    s.lines()
                        .rev()
                        .take(10)
                        .collect::<Vec<_>>()
                        .into_iter()
                        .rev()
                        .collect::<Vec<_>>()
                        .join("\n")
                })
                .unwrap_or_default();
            bail!(
                "starting the embedded PostgreSQL failed: {}\n{tail}",
                describe(&out)
            );
        }
        tracing::info!(port = self.port, dir = %self.data_dir.display(), "embedded PostgreSQL started");
        Ok(())
    }

    /// The port of a server already running on this data directory, if any.
    fn running_port(&self) -> Option<u16> {
        let pid_file = std::fs::read_to_string(self.data_dir.join("postmaster.pid")).ok()?;
        let status = command(&self.bin_dir.join("pg_ctl"), self.run_as)
            .arg("-D")
            .arg(&self.data_dir)
            .arg("status")
            .output()
            .ok()?;
        if !status.status.success() {
            return None;
        }
        pid_file.lines().nth(3)?.trim().parse().ok()
    }

    async fn ensure_database(&self) -> anyhow::Result<()> {
        use diesel::QueryableByName;
        use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
        #[derive(QueryableByName)]
        struct Found {
            #[diesel(sql_type = diesel::sql_types::Bool)]
            found: bool,
        }
        let mut conn = AsyncPgConnection::establish(&self.url_for("postgres"))
            .await
            .context("connecting to the embedded PostgreSQL")?;
        let row: Found = diesel::sql_query(format!(
            "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = '{DATABASE}') AS found"
        ))
        .get_result(&mut conn)
        .await?;
        if !row.found {
            diesel::sql_query(format!("CREATE DATABASE {DATABASE}"))
                .execute(&mut conn)
                .await?;
        }
        Ok(())
    }
}

/// A command run as the server's user when we are root.
fn command(program: &Path, run_as: Option<(u32, u32)>) -> Command {
    let mut cmd = Command::new(program);
    cmd.current_dir("/")
        .env("LC_ALL", "C")
        // Its own process group: a terminal's Ctrl-C reaches Podium, which then stops
        // PostgreSQL in order, rather than hitting both at once.
        .process_group(0);
    if let Some((uid, gid)) = run_as {
        cmd.uid(uid).gid(gid);
    }
    cmd
}

fn describe(out: &Output) -> String {
    format!(
        "{} {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    )
}

/// The directory holding initdb, pg_ctl and postgres: PATH first, then the usual places.
fn find_bin_dir() -> anyhow::Result<PathBuf> {
    let has_all = |dir: &Path| {
        ["initdb", "pg_ctl", "postgres"]
            .iter()
            .all(|b| dir.join(b).is_file())
    };
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    for pattern_dir in ["/usr/lib/postgresql", "/usr/local/lib/postgresql"] {
        if let Ok(entries) = std::fs::read_dir(pattern_dir) {
            let mut versions: Vec<(u32, PathBuf)> = entries
                .flatten()
                .filter_map(|e| {
                    let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
                    Some((v, e.path().join("bin")))
                })
                .collect();
            versions.sort_by_key(|v| std::cmp::Reverse(v.0));
            candidates.extend(versions.into_iter().map(|(_, p)| p));
        }
    }
    candidates.extend(
        [
            "/usr/local/pgsql/bin",
            "/opt/homebrew/bin",
            "/usr/local/bin",
        ]
        .iter()
        .map(PathBuf::from),
    );
    candidates
        .into_iter()
        .find(|d| has_all(d))
        .map(|d| std::fs::canonicalize(d.join("pg_ctl")).ok().and_then(|p| p.parent().map(Path::to_path_buf)).unwrap_or(d))
        .context(
            "the PostgreSQL server binaries (initdb, pg_ctl, postgres) were not found on PATH or in \
             /usr/lib/postgresql/*/bin: install them (Debian/Ubuntu: `apt-get install postgresql`), \
             or set DATABASE_URL to an external PostgreSQL",
        )
}

fn lookup_user(name: &str) -> anyhow::Result<(u32, u32)> {
    let cname = std::ffi::CString::new(name)?;
    // SAFETY: getpwnam returns a pointer to static storage or null; we copy the ids out at once.
    let pw = unsafe { libc::getpwnam(cname.as_ptr()) };
    if pw.is_null() {
        bail!("no user `{name}`");
    }
    Ok(unsafe { ((*pw).pw_uid, (*pw).pw_gid) })
}

fn chown(path: &Path, uid: u32, gid: u32) -> anyhow::Result<()> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .with_context(|| format!("giving {} to the PostgreSQL user", path.display()))
}

/// As root, the server's user must be able to enter every parent of the data directory.
fn check_reachable(data_dir: &Path, run_as: Option<(u32, u32)>) -> anyhow::Result<()> {
    let Some(ids) = run_as else { return Ok(()) };
    let ok = command(Path::new("/bin/sh"), Some(ids))
        .args(["-c", "test -w \"$1\" && test -x \"$1\"", "sh"])
        .arg(data_dir)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        bail!(
            "the embedded PostgreSQL runs as the `{RUN_AS_WHEN_ROOT}` user (it refuses to run as root), and that \
             user cannot reach {} because a parent directory is closed to it. Set PODIUM_DATA_DIR to a \
             directory it can enter (for example /var/lib/podium), or set DATABASE_URL",
            data_dir.display()
        );
    }
    Ok(())
}

fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

fn random_token(len: usize) -> String {
    rand::thread_rng()
        .sample_iter(&rand::distributions::Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

/// Writes a secret readable by its owner only.
pub fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(contents.as_bytes())?;
    Ok(())
}
