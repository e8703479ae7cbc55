//! A private PostgreSQL cluster for the suite: `initdb` into a temporary directory, started
//! on a free loopback port, so that crashing it (`pg_ctl restart -m immediate`) disturbs no
//! other test. Stopped and removed when dropped, also when the suite fails.
//!
//! The tools refuse to run as root; as root they run as the `postgres` user (`runuser`).
//! `fsync` is off: the faults are process crashes, after which the operating system's page
//! cache still holds everything written, so it changes nothing but speed.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

pub struct Cluster {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
    as_postgres: bool,
}

impl Cluster {
    /// Creates and starts a cluster; panics with the tool's output when it cannot.
    pub fn start() -> Cluster {
        let bin = postgres_bin_dir();
        let as_postgres = running_as_root();
        let dir =
            std::env::temp_dir().join(format!("dionysus-faults-{}-{:08x}", std::process::id(), rand::random::<u32>()));
        std::fs::create_dir_all(&dir).expect("creating the cluster directory");
        let port = free_port();
        let cluster = Cluster { dir, bin, port, as_postgres };
        if as_postgres {
            let status = Command::new("chown").args(["postgres:postgres"]).arg(&cluster.dir).status();
            assert!(status.is_ok_and(|s| s.success()), "cannot chown {} to postgres", cluster.dir.display());
        }
        let data = cluster.data();
        cluster.tool("initdb", |command| {
            command.arg("-D").arg(&data).args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"]);
        });
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
            cluster.port,
            cluster.dir.display()
        );
        let log = cluster.dir.join("postgres.log");
        cluster.tool("pg_ctl", |command| {
            command.arg("-D").arg(&data).arg("-l").arg(&log).args(["-w", "-t", "60", "-o", &options, "start"]);
        });
        cluster
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// Runs a PostgreSQL tool (as `postgres` when we are root); panics when it fails.
    fn tool(&self, name: &str, args: impl FnOnce(&mut Command)) {
        let path = self.bin.join(name);
        let mut command = if self.as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(&path);
            command
        } else {
            Command::new(&path)
        };
        command.current_dir(&self.dir);
        args(&mut command);
        run(&mut command, name, &self.dir.join(format!("{name}.out")));
    }

    /// The URL of database `name` in this cluster.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    pub async fn create_database(&self, name: &str) -> String {
        let mut admin = AsyncPgConnection::establish(&self.url("postgres")).await.expect("connecting to the cluster");
        diesel::sql_query(format!("CREATE DATABASE \"{name}\""))
            .execute(&mut admin)
            .await
            .expect("creating a database");
        self.url(name)
    }

    /// Crashes PostgreSQL (no shutdown checkpoint; clients lose their connections at once)
    /// and starts it again, which replays the WAL.
    pub fn restart_immediately(&self) {
        let (data, log) = (self.data(), self.log());
        self.tool("pg_ctl", |command| {
            command.arg("-D").arg(&data).arg("-l").arg(&log).args(["-w", "-t", "60", "-m", "immediate", "restart"]);
        });
    }

    /// The server log, for failure reports.
    pub fn log(&self) -> PathBuf {
        self.dir.join("postgres.log")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let data = self.data();
        let path = self.bin.join("pg_ctl");
        let mut command = if self.as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(&path);
            command
        } else {
            Command::new(&path)
        };
        let _ = command
            .arg("-D")
            .arg(&data)
            .args(["-m", "immediate", "stop"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs a tool with its output in a file, not a pipe: the server `pg_ctl` starts would keep a
/// pipe open, and reading it would never end.
fn run(command: &mut Command, what: &str, output: &Path) {
    let file = std::fs::File::create(output).unwrap_or_else(|error| panic!("{what}: {}: {error}", output.display()));
    let copy = file.try_clone().unwrap_or_else(|error| panic!("{what}: {error}"));
    command.stdin(Stdio::null()).stdout(file).stderr(copy);
    let status = command.status().unwrap_or_else(|error| panic!("{what}: cannot run {command:?}: {error}"));
    assert!(status.success(), "{what} failed ({status}):\n{}", std::fs::read_to_string(output).unwrap_or_default());
}

/// The newest `/usr/lib/postgresql/<version>/bin`, or `$PG_BIN_DIR`.
fn postgres_bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("PG_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            Path::new(&bin.join("initdb")).exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).unwrap_or_else(|| {
        panic!(
            "the fault suite needs the PostgreSQL server tools (initdb, pg_ctl) for a private cluster: \
             none under /usr/lib/postgresql/<version>/bin; install postgresql or set PG_BIN_DIR"
        )
    })
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|output| String::from_utf8_lossy(&output.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A port nothing listens on now.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding a free port");
    listener.local_addr().expect("a bound address").port()
}
