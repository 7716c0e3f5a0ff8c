//! A real PostgreSQL server for tests: `initdb` and `postgres` from Debian's PostgreSQL 15
//! (`cargo xtask setup` installs it), in a temporary directory, on a free loopback port, one
//! per test process. Standard library only, so the host's unit tests and the whole-system
//! tests include the same file (`#[path]`).
//!
//! The server runs under a small shell that waits on a pipe from this process: when the test
//! process exits, however it exits, the pipe closes and the shell stops the server and removes
//! its directory. As root (CI), PostgreSQL refuses to run, so the shell runs as the `postgres`
//! user that Debian's package creates.
#![allow(dead_code)]

use std::io::Write;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Where Debian puts PostgreSQL 15's programs; `CORRAL_POSTGRES_BIN` overrides it.
const DEFAULT_BIN: &str = "/usr/lib/postgresql/15/bin";

/// A running server (`user` corral, trust authentication on loopback).
pub struct Postgres {
    pub port: u16,
    bin: PathBuf,
    /// Holds the pipe the server's shell waits on.
    _shell: Mutex<Child>,
}

static SERVER: OnceLock<Option<Postgres>> = OnceLock::new();
static DATABASES: AtomicUsize = AtomicUsize::new(0);

/// The test process's server, started on first use. `None` when PostgreSQL is not installed
/// on a developer's machine (the caller skips, saying so); under `CI=true` that is a failure.
pub fn postgres() -> Option<&'static Postgres> {
    SERVER.get_or_init(|| start(None)).as_ref()
}

/// A server of the caller's own, which it may stop and start again ([`Postgres::stop`]); gone
/// when dropped. `None` as for [`postgres`].
pub fn own_postgres() -> Option<Postgres> {
    start(None)
}

/// [`own_postgres`] serving TLS (`ssl = on`) with `cert` and `key` (PEM), besides plain TCP.
pub fn own_postgres_tls(cert: &str, key: &str) -> Option<Postgres> {
    start(Some((cert, key)))
}

fn bin_dir() -> PathBuf {
    std::env::var_os("CORRAL_POSTGRES_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_BIN))
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| out.stdout.trim_ascii() == b"0")
}

fn start(tls: Option<(&str, &str)>) -> Option<Postgres> {
    let bin = bin_dir();
    if !bin.join("initdb").is_file() {
        assert!(
            std::env::var_os("CI").is_none(),
            "PostgreSQL 15 is missing ({} has no initdb): run `cargo xtask setup`",
            bin.display()
        );
        eprintln!(
            "skipping the PostgreSQL cases: {} has no initdb (`cargo xtask setup` installs it)",
            bin.display()
        );
        return None;
    }
    let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let script = format!(
        r#"set -e
dir=$(mktemp -d /tmp/corral-test-pg.XXXXXX)
trap 'rm -rf "$dir"' EXIT
"{bin}/initdb" -D "$dir/data" -U corral --auth=trust -E UTF8 --no-sync >"$dir/initdb.log" 2>&1 || {{ cat "$dir/initdb.log" >&2; exit 1; }}
tls=""
if [ -n "$CORRAL_PG_CERT" ]; then
  (umask 077; printf '%s' "$CORRAL_PG_CERT" >"$dir/server.crt"; printf '%s' "$CORRAL_PG_KEY" >"$dir/server.key")
  tls="-c ssl=on -c ssl_cert_file=$dir/server.crt -c ssl_key_file=$dir/server.key"
fi
serve() {{
  "{bin}/postgres" -D "$dir/data" -p {port} -k "$dir" -c listen_addresses=127.0.0.1 \
    -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200 \
    $tls >>"$dir/server.log" 2>&1 &
  pid=$!
}}
serve
while read -r command; do
  case "$command" in
    stop) kill -INT "$pid" 2>/dev/null || true; wait "$pid" || true ;;
    start) serve ;;
    *) break ;;
  esac
done
kill -INT "$pid" 2>/dev/null || true
wait "$pid" || true
"#,
        bin = bin.display()
    );
    let mut command = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", "sh", "-c", &script]);
        c
    } else {
        let mut c = Command::new("sh");
        c.args(["-c", &script]);
        c
    };
    if let Some((cert, key)) = tls {
        command
            .env("CORRAL_PG_CERT", cert)
            .env("CORRAL_PG_KEY", key);
    }
    let shell = command
        .current_dir("/")
        .stdin(Stdio::piped())
        .spawn()
        .expect("cannot start the PostgreSQL test server's shell");
    let server = Postgres {
        port,
        bin,
        _shell: Mutex::new(shell),
    };
    server.until_serving();
    Some(server)
}

impl Postgres {
    /// Waits until the server answers queries (at most 60 s).
    fn until_serving(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.psql("postgres", "SELECT 1").is_err() {
            assert!(
                Instant::now() < deadline,
                "the PostgreSQL test server did not start on port {} within 60 s",
                self.port
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn command(&self, command: &str) {
        let mut shell = self._shell.lock().unwrap();
        let stdin = shell.stdin.as_mut().expect("the shell's pipe");
        writeln!(stdin, "{command}").expect("the server's shell is running");
        stdin.flush().unwrap();
    }

    /// Stops the server (a fast shutdown: connections are cut), returning once it no longer
    /// listens. For a server from [`own_postgres`].
    pub fn stop(&self) {
        self.command("stop");
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)).is_ok() {
            assert!(
                Instant::now() < deadline,
                "PostgreSQL still listens 30 s after stop"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts a stopped server again on the same port and data, returning once it answers.
    pub fn start(&self) {
        self.command("start");
        self.until_serving();
    }

    /// Runs `sql` with `psql` against `database`; its output, or why it failed.
    pub fn psql(&self, database: &str, sql: &str) -> Result<String, String> {
        if TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)).is_err() {
            return Err("not listening".into());
        }
        let out = Command::new(self.bin.join("psql"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "corral",
            ])
            .args(["-d", database, "-v", "ON_ERROR_STOP=1", "-tA", "-c", sql])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// A new, empty database; its URL.
    pub fn database(&self, name: &str) -> String {
        let database = format!(
            "{name}_{}_{}",
            std::process::id(),
            DATABASES.fetch_add(1, Ordering::Relaxed)
        );
        self.psql("postgres", &format!("CREATE DATABASE {database}"))
            .unwrap_or_else(|e| panic!("cannot create database {database}: {e}"));
        self.url(&database)
    }

    /// The URL of `database` on this server.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://corral@127.0.0.1:{}/{database}", self.port)
    }

    /// Where PostgreSQL's programs are.
    pub fn bin(&self) -> &Path {
        &self.bin
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Ok(mut shell) = self._shell.lock() {
            // The pipe's end stops the server and removes its directory.
            drop(shell.stdin.take());
            let _ = shell.wait();
        }
    }
}
