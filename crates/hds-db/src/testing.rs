//! A throwaway PostgreSQL cluster for tests, so that every suite that runs on SQLite also
//! runs on PostgreSQL without a server to set up.
//!
//! [`PostgresCluster::shared`] starts one cluster per test binary, lazily, on the first call.
//! Statics are never dropped, so the shared cluster is stopped by an `atexit` handler (which
//! runs both when the test harness returns and when it calls `exit` after failures), and, in
//! case the process is killed outright, by a small watchdog shell that waits for the test
//! process to end and then stops the cluster and removes its directory.
//!
//! The cluster uses the PostgreSQL binaries under `/usr/lib/postgresql/*/bin` (the newest
//! version found), trust authentication, listens on 127.0.0.1 only, on a free port, with its
//! unix socket inside its own temporary directory, and `fsync=off` (a test cluster need not
//! survive a crash). `initdb` refuses to run as root, so as root the cluster runs as the
//! `postgres` user (`runuser -u postgres --`); otherwise as the current user.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use sqlx::Connection;

/// Why the test cluster could not be started or used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// No `initdb` under `/usr/lib/postgresql/*/bin`.
    #[error("no PostgreSQL installation found under /usr/lib/postgresql/*/bin")]
    NotInstalled,
    /// A file system operation failed.
    #[error("test cluster I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// A PostgreSQL tool failed.
    #[error("{tool} failed: {output}")]
    Tool {
        /// The tool, e.g. `initdb`.
        tool: &'static str,
        /// Its output.
        output: String,
    },
    /// Connecting or creating a database failed.
    #[error("test cluster database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The shared cluster failed to start earlier in this process.
    #[error("the shared test cluster failed to start: {0}")]
    SharedStartFailed(String),
}

/// A running PostgreSQL cluster in a temporary directory, stopped and removed on drop.
#[derive(Debug)]
pub struct PostgresCluster {
    bin_dir: PathBuf,
    /// Holds `data/`, the socket and `postgres.log`.
    root: PathBuf,
    port: u16,
    run_as_postgres: bool,
    stopped: AtomicBool,
}

static SHARED: OnceLock<Result<PostgresCluster, String>> = OnceLock::new();

unsafe extern "C" {
    /// C's `atexit`: registers a function run when the process exits normally.
    fn atexit(callback: extern "C" fn()) -> std::ffi::c_int;
}

extern "C" fn stop_shared_cluster() {
    if let Some(Ok(cluster)) = SHARED.get() {
        cluster.stop_and_remove();
    }
}

impl PostgresCluster {
    /// The cluster shared by all tests of this process, started on first use and stopped
    /// when the process exits.
    pub fn shared() -> Result<&'static PostgresCluster, ClusterError> {
        let shared = SHARED.get_or_init(|| {
            let cluster = PostgresCluster::start().map_err(|error| error.to_string())?;
            // SAFETY: `atexit` only stores the pointer of a function with the signature it
            // expects; the callback takes no arguments and does not unwind (it only runs
            // commands and removes files, ignoring errors).
            unsafe {
                atexit(stop_shared_cluster);
            }
            Ok(cluster)
        });
        match shared {
            Ok(cluster) => Ok(cluster),
            Err(message) => Err(ClusterError::SharedStartFailed(message.clone())),
        }
    }

    /// Initializes and starts a new cluster in a fresh temporary directory.
    pub fn start() -> Result<PostgresCluster, ClusterError> {
        let bin_dir = find_bin_dir()?;
        let run_as_postgres = is_root()?;
        let root = tempfile::Builder::new().prefix("hds-pg-").tempdir()?.keep();
        if run_as_postgres {
            let status = Command::new("chown")
                .arg("postgres:")
                .arg(&root)
                .stdin(Stdio::null())
                .status()?;
            if !status.success() {
                return Err(ClusterError::Tool {
                    tool: "chown",
                    output: status.to_string(),
                });
            }
        }
        let mut cluster = PostgresCluster {
            bin_dir,
            root,
            port: 0,
            run_as_postgres,
            stopped: AtomicBool::new(false),
        };
        cluster.run(
            "initdb",
            &[
                "-D",
                &path_arg(&cluster.data_dir()),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
        )?;
        cluster.spawn_watchdog()?;
        // A port found free can be taken before the server binds it; try a few.
        let mut last_error = None;
        for _ in 0..5 {
            cluster.port = free_port()?;
            let options = format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off \
                 -c full_page_writes=off -c max_connections=300",
                cluster.port,
                path_arg(&cluster.root),
            );
            match cluster.run(
                "pg_ctl",
                &[
                    "-D",
                    &path_arg(&cluster.data_dir()),
                    "-l",
                    &path_arg(&cluster.root.join("postgres.log")),
                    "-o",
                    &options,
                    "-w",
                    "-t",
                    "60",
                    "start",
                ],
            ) {
                Ok(()) => return Ok(cluster),
                Err(error) => last_error = Some(error),
            }
        }
        cluster.stop_and_remove();
        Err(last_error.unwrap_or(ClusterError::NotInstalled))
    }

    /// The URL of the `postgres` database.
    pub fn url(&self) -> String {
        self.database_url("postgres")
    }

    /// The URL of a database of this cluster.
    pub fn database_url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// The TCP port the cluster listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Creates an empty database `name` (letters, digits and `_`) and returns its URL.
    pub async fn create_database(&self, name: &str) -> Result<String, ClusterError> {
        if name.is_empty()
            || !name
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || byte == b'_')
        {
            return Err(ClusterError::Tool {
                tool: "create_database",
                output: "database names are letters, digits and _".to_owned(),
            });
        }
        let mut connection = sqlx::PgConnection::connect(&self.url()).await?;
        sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut connection)
            .await?;
        connection.close().await?;
        Ok(self.database_url(name))
    }

    /// Creates a database with a name unique in this cluster and returns its URL: one per test
    /// keeps tests independent.
    pub async fn fresh_database(&self) -> Result<String, ClusterError> {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let number = NEXT.fetch_add(1, Ordering::Relaxed);
        self.create_database(&format!("test_{}_{number}", std::process::id()))
            .await
    }

    /// Stops the server (immediately: a test cluster needs no clean shutdown) and removes its
    /// directory. Idempotent.
    pub fn stop_and_remove(&self) {
        if self.stopped.swap(true, Ordering::SeqCst) {
            return;
        }
        let data_dir = path_arg(&self.data_dir());
        let _ = self.run(
            "pg_ctl",
            &["-D", &data_dir, "-m", "immediate", "-w", "stop"],
        );
        let _ = std::fs::remove_dir_all(&self.root);
    }

    fn data_dir(&self) -> PathBuf {
        self.root.join("data")
    }

    /// Runs a PostgreSQL tool (as `postgres` when root), failing with its output.
    fn run(&self, tool: &'static str, args: &[&str]) -> Result<(), ClusterError> {
        let output = self
            .command(tool)
            .args(args)
            .stdin(Stdio::null())
            .output()?;
        if output.status.success() {
            Ok(())
        } else {
            Err(ClusterError::Tool {
                tool,
                output: format!(
                    "{}\n{}{}",
                    output.status,
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr)
                ),
            })
        }
    }

    fn command(&self, tool: &str) -> Command {
        let program = self.bin_dir.join(tool);
        if self.run_as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            Command::new(program)
        }
    }

    /// Starts a shell that waits for this process to end, then stops the cluster and removes
    /// its directory: the cleanup of last resort when the process is killed.
    fn spawn_watchdog(&self) -> Result<(), ClusterError> {
        let stop = self.command("pg_ctl");
        let mut stop_line = shell_quote(&stop.get_program().to_string_lossy());
        for arg in stop.get_args() {
            stop_line.push(' ');
            stop_line.push_str(&shell_quote(&arg.to_string_lossy()));
        }
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; \
             if [ -d {data} ]; then {stop} -D {data} -m immediate -w stop; fi; rm -rf {root}",
            pid = std::process::id(),
            data = shell_quote(&path_arg(&self.data_dir())),
            stop = stop_line,
            root = shell_quote(&path_arg(&self.root)),
        );
        Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        Ok(())
    }
}

impl Drop for PostgresCluster {
    fn drop(&mut self) {
        self.stop_and_remove();
    }
}

/// The `bin` directory of the newest PostgreSQL under `/usr/lib/postgresql`.
fn find_bin_dir() -> Result<PathBuf, ClusterError> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|_| ClusterError::NotInstalled)?
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let version = entry.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .ok_or(ClusterError::NotInstalled)
}

fn is_root() -> Result<bool, ClusterError> {
    let output = Command::new("id").arg("-u").stdin(Stdio::null()).output()?;
    Ok(String::from_utf8_lossy(&output.stdout).trim() == "0")
}

fn free_port() -> Result<u16, ClusterError> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
    Ok(listener.local_addr()?.port())
}

fn path_arg(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

fn shell_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}
