//! A private PostgreSQL cluster for `tripflow run` and the tests, started from the machine's own
//! PostgreSQL binaries. Created once under a folder, reused by later runs (its port is remembered in
//! the folder). PostgreSQL refuses to run as root, so as root the cluster belongs to, and runs as,
//! the `postgres` system user (or `nobody`); when that user cannot reach the folder (a checkout
//! under `/root`), the cluster lives under `/var/tmp/tripflow-postgres/` instead, one per folder.

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use tracing::info;

use crate::error::{Error, Result};

pub const SUPERUSER: &str = "tripflow";
pub const DATABASE: &str = "tripflow";
const PORT_FILE: &str = "tripflow.port";

#[derive(Debug, Clone)]
pub struct LocalPostgres {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
    run_as: Option<(u32, u32)>,
}

fn unavailable(msg: impl Into<String>) -> Error {
    Error::DatabaseUnavailable(msg.into())
}

/// The folder holding `initdb` and `pg_ctl`: `PATH` first, then the newest `/usr/lib/postgresql/*/bin`.
pub fn find_bin_dir() -> Result<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .find(|dir| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file());
    if let Some(dir) = on_path {
        return Ok(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse::<u32>().ok()?, e.path().join("bin"))))
        .filter(|(_, bin)| bin.join("initdb").is_file())
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).ok_or_else(|| {
        unavailable(
            "no PostgreSQL server binaries found (initdb, pg_ctl) on PATH or in /usr/lib/postgresql/*/bin. \
             Install them (Debian/Ubuntu: `apt-get install postgresql`; macOS: `brew install postgresql@15`) \
             or pass --database-url / set DATABASE_URL to use an existing server.",
        )
    })
}

/// uid/gid of the unprivileged user to run PostgreSQL as, when we are root.
fn unprivileged_user() -> Result<Option<(u32, u32)>> {
    let me = std::fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(u32::MAX);
    if me != 0 {
        return Ok(None);
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let lookup = |name: &str| {
        passwd.lines().find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            (fields.first() == Some(&name) && fields.len() > 3)
                .then(|| Some((fields[2].parse().ok()?, fields[3].parse().ok()?)))
                .flatten()
        })
    };
    lookup("postgres")
        .or_else(|| lookup("nobody"))
        .map(Some)
        .ok_or_else(|| unavailable("running as root and no `postgres` or `nobody` user to run PostgreSQL as"))
}

/// As root the server runs as another user, who must be able to walk down to its folder: the first
/// ancestor it cannot enter, if any.
fn unreachable_ancestor(dir: &Path, uid: u32) -> Option<PathBuf> {
    dir.ancestors().skip(1).find_map(|ancestor| {
        let meta = std::fs::metadata(ancestor).ok()?;
        let traversable = meta.mode() & 0o001 != 0 || (meta.uid() == uid && meta.mode() & 0o100 != 0);
        (!traversable).then(|| ancestor.to_path_buf())
    })
}

/// Where root keeps the clusters of data folders their server user cannot reach (a checkout under
/// `/root`, the common case in a container): a world-traversable folder, one cluster per data folder.
const RELOCATED_CLUSTERS: &str = "/var/tmp/tripflow-postgres";

/// The cluster's real folder: `requested` itself, or, when the server's user cannot reach it, a
/// folder under [`RELOCATED_CLUSTERS`] named for `requested`, so the same data folder always finds
/// the same cluster (and `tripflow db stop` the one `tripflow run` started).
fn cluster_home(requested: &Path, uid: u32) -> Result<PathBuf> {
    let Some(blocked) = unreachable_ancestor(requested, uid) else {
        return Ok(requested.to_path_buf());
    };
    let name = crate::checksum::md5_hex(requested.as_os_str().as_encoded_bytes());
    let home = Path::new(RELOCATED_CLUSTERS).join(&name[..16]);
    let parent = Path::new(RELOCATED_CLUSTERS);
    std::fs::create_dir_all(parent).map_err(|e| unavailable(format!("creating {}: {e}", parent.display())))?;
    std::fs::set_permissions(parent, std::os::unix::fs::PermissionsExt::from_mode(0o711))
        .map_err(|e| unavailable(format!("{}: {e}", parent.display())))?;
    std::fs::create_dir_all(&home).map_err(|e| unavailable(format!("creating {}: {e}", home.display())))?;
    if let Some(ancestor) = unreachable_ancestor(&home, uid) {
        return Err(unavailable(format!(
            "PostgreSQL refuses to run as root, so the private cluster runs as uid {uid}, which can enter neither {} \
             nor {}: make one traversable (chmod o+x), or pass --database-url",
            blocked.display(),
            ancestor.display()
        )));
    }
    info!(
        requested = %requested.display(),
        cluster = %home.display(),
        "the PostgreSQL user cannot enter {}, so the private cluster lives in {}",
        blocked.display(),
        home.display()
    );
    // A note beside the data, for the person who looks for the cluster where it was asked for.
    let _ = std::fs::write(
        requested.join("WHERE_IS_THE_CLUSTER.txt"),
        format!("This data folder's PostgreSQL cluster lives in {}\n", home.display()),
    );
    Ok(home)
}

fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| unavailable(format!("no free port: {e}")))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| unavailable(e.to_string()))
}

impl LocalPostgres {
    /// Starts the cluster in `dir` (creating it on first use) unless it is already running.
    pub fn ensure_running(dir: &Path) -> Result<Self> {
        let bin = find_bin_dir()?;
        let run_as = unprivileged_user()?;
        std::fs::create_dir_all(dir).map_err(|e| unavailable(format!("creating {}: {e}", dir.display())))?;
        let dir = dir
            .canonicalize()
            .map_err(|e| unavailable(format!("{}: {e}", dir.display())))?;
        let dir = match run_as {
            Some((uid, _)) => cluster_home(&dir, uid)?,
            None => dir,
        };
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid))
                .map_err(|e| unavailable(format!("handing {} to the postgres user: {e}", dir.display())))?;
        }
        let cluster = LocalPostgres {
            port: 0,
            dir,
            bin,
            run_as,
        };
        if !cluster.dir.join("PG_VERSION").exists() {
            info!(dir = %cluster.dir.display(), "creating a private PostgreSQL cluster");
            cluster.run_tool(
                "initdb",
                &[
                    "-D",
                    &cluster.dir_str(),
                    "-U",
                    SUPERUSER,
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    "--no-sync",
                ],
            )?;
        }
        let port_file = cluster.dir.join(PORT_FILE);
        let port = match std::fs::read_to_string(&port_file)
            .ok()
            .and_then(|p| p.trim().parse::<u16>().ok())
        {
            Some(port) => port,
            None => {
                let port = free_port()?;
                // Written by whoever we are: root may write into a postgres-owned folder, and the
                // server itself never reads this file.
                std::fs::write(&port_file, port.to_string())
                    .map_err(|e| unavailable(format!("{}: {e}", port_file.display())))?;
                port
            }
        };
        let cluster = LocalPostgres { port, ..cluster };
        if !cluster.is_running() {
            let options = format!(
                "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
                cluster.dir_str()
            );
            let log = cluster.dir.join("server.log").display().to_string();
            info!(port, "starting the private PostgreSQL cluster");
            cluster.run_tool(
                "pg_ctl",
                &[
                    "-D",
                    &cluster.dir_str(),
                    "-l",
                    &log,
                    "-o",
                    &options,
                    "-w",
                    "-t",
                    "60",
                    "start",
                ],
            )?;
        }
        Ok(cluster)
    }

    fn dir_str(&self) -> String {
        self.dir.display().to_string()
    }

    /// The cluster's folder (where it was asked for, or where it was moved to; see [`cluster_home`]).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// URL of the cluster's `postgres` maintenance database.
    pub fn admin_url(&self) -> String {
        format!("postgres://{SUPERUSER}@127.0.0.1:{}/postgres", self.port)
    }

    /// URL of the `tripflow` database (create it first with [`LocalPostgres::ensure_database`]).
    pub fn url(&self) -> String {
        format!("postgres://{SUPERUSER}@127.0.0.1:{}/{DATABASE}", self.port)
    }

    /// Creates the named database if missing and returns its URL.
    pub async fn ensure_database(&self, name: &str) -> Result<String> {
        let admin = super::connect(&self.admin_url()).await?;
        let exists = admin
            .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
            .await
            .map_err(super::classify)?
            .is_some();
        if !exists {
            let quoted = name.replace('"', "\"\"");
            admin
                .batch_execute(&format!("CREATE DATABASE \"{quoted}\""))
                .await
                .map_err(super::classify)?;
        }
        Ok(format!("postgres://{SUPERUSER}@127.0.0.1:{}/{name}", self.port))
    }

    pub fn is_running(&self) -> bool {
        self.command("pg_ctl")
            .args(["-D", &self.dir_str(), "status"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    /// Stops the server (fast shutdown). The cluster's files stay for the next run.
    pub fn stop(&self) -> Result<()> {
        if self.is_running() {
            self.run_tool("pg_ctl", &["-D", &self.dir_str(), "-m", "fast", "-w", "stop"])?;
        }
        Ok(())
    }

    fn command(&self, tool: &str) -> Command {
        let mut command = Command::new(self.bin.join(tool));
        if let Some((uid, gid)) = self.run_as {
            command.uid(uid).gid(gid);
        }
        command.current_dir(&self.dir);
        command
    }

    fn run_tool(&self, tool: &str, args: &[&str]) -> Result<()> {
        let output = self
            .command(tool)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| unavailable(format!("{tool}: {e}")))?;
        if output.status.success() {
            return Ok(());
        }
        let log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
        let log_tail: Vec<&str> = log.lines().rev().take(5).collect();
        Err(unavailable(format!(
            "{tool} failed ({}): {}{}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim(),
            if log_tail.is_empty() { "" } else { "; server log: " },
            log_tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
        )))
    }
}
