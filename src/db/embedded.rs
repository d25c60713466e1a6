//! The embedded default's private PostgreSQL cluster, run from the system's server
//! binaries in `<data dir>/postgres`: created on first start, reused later, stopped on
//! shutdown. PostgreSQL refuses to run as root, so as root the server runs as the
//! `postgres` user, which must be able to reach the data directory.
//!
//! The Podium process that owns the cluster holds an exclusive lock on
//! `<data dir>/podium.lock` (released by the kernel however it dies). Whoever takes the lock
//! and finds a server still running from the data directory is looking at an orphan of a
//! killed Podium: it stops it and starts it afresh (with a clean environment), and stops it
//! on exit, also when the start fails half-way. Another Podium (`podium seed` next to the
//! server) finds the lock held and shares the running server without owning it.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rand::RngExt;

const SUPERUSER: &str = "podium";
const DATABASE: &str = "podium";
const RUN_AS_WHEN_ROOT: &str = "postgres";
/// Attempts at a free port when the one tried is taken meanwhile.
const PORT_ATTEMPTS: usize = 4;

pub struct EmbeddedPostgres {
    bin_dir: PathBuf,
    root: PathBuf,
    data_dir: PathBuf,
    run_as: Option<(u32, u32)>,
    port: u16,
    password: String,
    /// True when this process started the server and stops it (on `stop` or when dropped).
    owned: bool,
    stopped: AtomicBool,
    /// True when this start created the cluster (first start: seed the demo data).
    pub created: bool,
    /// The owner's lock; released (after the server stopped) when this is dropped.
    _lock: Option<File>,
}

impl std::fmt::Debug for EmbeddedPostgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedPostgres")
            .field("data_dir", &self.data_dir)
            .field("port", &self.port)
            .field("owned", &self.owned)
            .field("password", &"[redacted]")
            .finish_non_exhaustive()
    }
}

impl Drop for EmbeddedPostgres {
    /// A start that failed half-way, an error or a panic: stop what this process started.
    fn drop(&mut self) {
        self.stop_blocking();
    }
}

impl EmbeddedPostgres {
    /// Creates (first time) and starts the cluster, and makes sure the `podium` database exists.
    pub async fn start(root: &Path) -> anyhow::Result<Self> {
        let root = root.to_path_buf();
        let pg = tokio::task::spawn_blocking(move || Self::start_blocking(&root)).await??;
        // On failure `pg` is dropped here, which stops the server.
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

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the server if this process started it (once). Needs the multi-threaded runtime.
    pub async fn stop(&self) {
        tokio::task::block_in_place(|| self.stop_blocking());
    }

    fn stop_blocking(&self) {
        if !self.owned || self.stopped.swap(true, Ordering::SeqCst) {
            return;
        }
        let out = self.pg_ctl_stop("fast");
        match &out {
            Ok(out) if out.status.success() => tracing::info!("embedded PostgreSQL stopped"),
            Ok(out) => {
                tracing::warn!(output = %describe(out), "stopping embedded PostgreSQL failed")
            }
            Err(e) => tracing::warn!(error = %e, "stopping embedded PostgreSQL failed"),
        }
        let clean = matches!(out, Ok(ref o) if o.status.success());
        if !clean && let Err(e) = self.stop_leftovers() {
            tracing::warn!(error = %e, "embedded PostgreSQL may still be running");
        }
    }

    fn pg_ctl_stop(&self, mode: &str) -> std::io::Result<Output> {
        command(&self.bin_dir.join("pg_ctl"), self.run_as)
            .arg("-D")
            .arg(&self.data_dir)
            .args(["-m", mode, "-w", "-t", "60", "stop"])
            .output()
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
        let lock = owner_lock(&root)?;

        let password_file = root.join("postgres.password");
        let initialized = data_dir.join("PG_VERSION").exists();
        let mut pg = EmbeddedPostgres {
            bin_dir,
            root: root.clone(),
            data_dir,
            run_as,
            port: 0,
            password: String::new(),
            owned: false,
            stopped: AtomicBool::new(false),
            created: false,
            _lock: None,
        };
        if lock.is_none() {
            // Another live Podium owns the cluster: share its server, leave it running.
            let running = initialized.then(|| pg.running_port()).flatten();
            let Some(port) = running else {
                bail!(
                    "another Podium process is using {} and its PostgreSQL is not running (yet): \
                     wait for it to start, or stop it",
                    root.display()
                );
            };
            pg.password = read_password(&password_file)?;
            pg.port = port;
            tracing::info!(
                port,
                "embedded PostgreSQL is run by another Podium process; sharing it"
            );
            return Ok(pg);
        }
        pg._lock = lock;

        pg.password = if initialized {
            read_password(&password_file)?
        } else {
            let password = random_token(32);
            write_private(&password_file, &password)?;
            password
        };
        if !pg.data_dir.exists() {
            std::fs::create_dir(&pg.data_dir)?;
        }
        std::fs::set_permissions(&pg.data_dir, std::fs::Permissions::from_mode(0o700))?;
        if let Some((uid, gid)) = run_as {
            chown(&pg.data_dir, uid, gid)?;
        }
        check_reachable(&pg.data_dir, run_as)?;

        if !initialized {
            if let Err(e) = pg.initdb(&root) {
                // Leave no half-made cluster behind: the next start begins afresh.
                let _ = std::fs::remove_dir_all(&pg.data_dir);
                return Err(e);
            }
            pg.created = true;
        } else {
            // We hold the lock, so a server still running here was left by a killed Podium.
            pg.stop_leftovers()?;
        }
        pg.owned = true;
        pg.start_on_a_free_port()?;
        Ok(pg)
    }

    /// Stops whatever still runs from the data directory (an orphaned server, its backends)
    /// and clears a stale `postmaster.pid`.
    fn stop_leftovers(&self) -> anyhow::Result<()> {
        let pid_file = self.data_dir.join("postmaster.pid");
        let alive = cluster_processes(&self.data_dir);
        if !pid_file.exists() && alive.as_ref().is_some_and(Vec::is_empty) {
            return Ok(());
        }
        // pg_ctl signals the pid in postmaster.pid: make sure it is still our server, not a
        // process that inherited the number.
        let postmaster: Option<i32> = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|f| f.lines().next()?.trim().parse().ok());
        let ours = match &alive {
            Some(pids) => postmaster.is_some_and(|p| pids.contains(&p)),
            None => self.running_port().is_some(),
        };
        if ours {
            tracing::warn!(
                dir = %self.data_dir.display(),
                "the embedded PostgreSQL outlived the Podium that started it; restarting it"
            );
            if !self.pg_ctl_stop("fast").is_ok_and(|o| o.status.success()) {
                let _ = self.pg_ctl_stop("immediate");
            }
        }
        let Some(_) = alive else {
            // No /proc to look at: PostgreSQL itself recognises a stale postmaster.pid.
            return Ok(());
        };
        // Backends of a postmaster killed outright, or a server pg_ctl could not stop.
        let mut deadline = Instant::now() + Duration::from_secs(10);
        let mut signal = libc::SIGTERM;
        loop {
            let left = cluster_processes(&self.data_dir).unwrap_or_default();
            if left.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                if signal == libc::SIGKILL {
                    bail!(
                        "processes {left:?} still run from {} and do not stop; stop them and start again",
                        self.data_dir.display()
                    );
                }
                signal = libc::SIGKILL;
                deadline = Instant::now() + Duration::from_secs(5);
            }
            for pid in &left {
                // SAFETY: signals a process known to run from our data directory.
                unsafe { libc::kill(*pid, signal) };
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if pid_file.exists() {
            tracing::warn!("removing the stale postmaster.pid of a server that is gone");
            std::fs::remove_file(&pid_file)?;
        }
        Ok(())
    }

    /// Starts the server on the port it had last time, or another free one when that one
    /// is taken; a start that fails stops what it started.
    fn start_on_a_free_port(&mut self) -> anyhow::Result<()> {
        let port_file = self.root.join("postgres.port");
        let mut preferred = std::fs::read_to_string(&port_file)
            .ok()
            .and_then(|p| p.trim().parse::<u16>().ok());
        for attempt in 1..=PORT_ATTEMPTS {
            self.port = match preferred.take() {
                Some(port) if port_is_free(port) => port,
                Some(port) => {
                    tracing::warn!(
                        port,
                        "the embedded PostgreSQL's port is taken; picking another"
                    );
                    free_port()?
                }
                None => free_port()?,
            };
            match self.pg_ctl_start() {
                Ok(()) => {
                    std::fs::write(&port_file, format!("{}\n", self.port))?;
                    return Ok(());
                }
                Err(StartError::PortTaken) if attempt < PORT_ATTEMPTS => {
                    tracing::warn!(port = self.port, "port taken meanwhile; trying another");
                    self.stop_leftovers()?;
                }
                Err(StartError::PortTaken) => bail!("no free port for the embedded PostgreSQL"),
                Err(StartError::Other(e)) => return Err(e),
            }
        }
        unreachable!("the loop returns")
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

    fn pg_ctl_start(&self) -> Result<(), StartError> {
        let log = self.data_dir.join("server.log");
        let log_start = std::fs::metadata(&log).map_or(0, |m| m.len());
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
        if out.status.success() {
            tracing::info!(port = self.port, dir = %self.data_dir.display(), "embedded PostgreSQL started");
            return Ok(());
        }
        // What this start wrote to the log (the file is appended to across starts).
        let written = std::fs::read(&log)
            .map(|bytes| {
                String::from_utf8_lossy(&bytes[(log_start as usize).min(bytes.len())..])
                    .into_owned()
            })
            .unwrap_or_default();
        if written.contains("could not bind")
            || written.contains("could not create any TCP/IP sockets")
        {
            return Err(StartError::PortTaken);
        }
        let tail: Vec<&str> = written.lines().rev().take(10).collect();
        let tail = tail.into_iter().rev().collect::<Vec<_>>().join("\n");
        Err(StartError::Other(anyhow::anyhow!(
            "starting the embedded PostgreSQL failed: {}\n{tail}",
            describe(&out)
        )))
    }

    /// The port of a server running on this data directory, if any.
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

enum StartError {
    PortTaken,
    Other(anyhow::Error),
}

impl From<anyhow::Error> for StartError {
    fn from(e: anyhow::Error) -> Self {
        StartError::Other(e)
    }
}

/// Takes the owner's lock on the data directory; `None` when another live process holds it.
fn owner_lock(root: &Path) -> anyhow::Result<Option<File>> {
    let path = root.join("podium.lock");
    // std opens with O_CLOEXEC: PostgreSQL never inherits (and so never keeps) the lock.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(Some(file));
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(None)
    } else {
        Err(err).with_context(|| format!("locking {}", path.display()))
    }
}

fn read_password(path: &Path) -> anyhow::Result<String> {
    Ok(std::fs::read_to_string(path)
        .with_context(|| format!("reading {}", path.display()))?
        .trim()
        .to_string())
}

/// The PostgreSQL processes working in the data directory: a server and its backends
/// (PostgreSQL chdirs there). `None` without a /proc to look at.
fn cluster_processes(data_dir: &Path) -> Option<Vec<i32>> {
    let entries = std::fs::read_dir("/proc").ok()?;
    std::fs::read_link("/proc/self/cwd").ok()?;
    Some(
        entries
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| {
                std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd == data_dir)
                    && std::fs::read_to_string(format!("/proc/{pid}/comm"))
                        .is_ok_and(|comm| comm.trim() == "postgres")
            })
            .collect(),
    )
}

/// A command run as the server's user when we are root, in a clean environment: none of
/// Podium's settings and secrets reach PostgreSQL.
fn command(program: &Path, run_as: Option<(u32, u32)>) -> Command {
    let mut cmd = Command::new(program);
    cmd.env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("LANG", "C")
        .env("LC_ALL", "C");
    if let Some(tz) = std::env::var_os("TZ") {
        cmd.env("TZ", tz);
    }
    cmd.current_dir("/")
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

fn port_is_free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

fn random_token(len: usize) -> String {
    rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
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
