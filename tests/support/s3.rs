//! A real S3 server for tests: SeaweedFS's `weed server -s3` (`cargo xtask setup` installs it
//! into `.corral/seaweedfs/weed`; `CORRAL_WEED` overrides), in a temporary directory, on
//! loopback, one per test process. Without an identities file it accepts any credentials, and
//! `PUT /bucket` creates a bucket. Standard library only (included with `#[path]`).
//!
//! Like the PostgreSQL server, it runs under a shell that waits on a pipe from this process
//! and stops the server and removes its directory when the process exits.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// A running S3 server.
pub struct S3 {
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    port: u16,
    _shell: Mutex<Child>,
}

static SERVER: OnceLock<Option<S3>> = OnceLock::new();
static BUCKETS: AtomicUsize = AtomicUsize::new(0);

/// The test process's server, started on first use. `None` when `weed` is not installed on a
/// developer's machine (the caller skips, saying so); under `CI=true` that is a failure.
pub fn s3() -> Option<&'static S3> {
    SERVER.get_or_init(start).as_ref()
}

fn weed() -> PathBuf {
    std::env::var_os("CORRAL_WEED")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.corral/seaweedfs/weed"))
}

/// A free loopback port whose gRPC companion (port + 10000, as SeaweedFS picks) is free too.
fn free_port() -> u16 {
    loop {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        if port < 55000 && TcpListener::bind((Ipv4Addr::LOCALHOST, port + 10000)).is_ok() {
            return port;
        }
    }
}

fn start() -> Option<S3> {
    let weed = weed();
    if !weed.is_file() {
        assert!(
            std::env::var_os("CI").is_none(),
            "SeaweedFS is missing ({}): run `cargo xtask setup`",
            weed.display()
        );
        eprintln!(
            "skipping the S3 cases: {} is missing (`cargo xtask setup` installs it)",
            weed.display()
        );
        return None;
    }
    let [master, volume, filer, s3] = [free_port(), free_port(), free_port(), free_port()];
    let dir = std::env::temp_dir().join(format!("corral-test-s3-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a directory for the S3 test server");
    // Every port is chosen here: SeaweedFS's Iceberg catalog and Lance namespace would take
    // the fixed 8181 and 9101, which a server still stopping in the previous test process
    // (or anything else on the machine) may hold.
    let script = format!(
        r#"set -e
dir="{dir}"
trap 'rm -rf "$dir"' EXIT
"{weed}" server -s3 -dir="$dir" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
  -master.port={master} -volume.port={volume} -filer.port={filer} -s3.port={s3} \
  -s3.port.iceberg=0 -s3.port.lance=0 -master.volumeSizeLimitMB=64 -volume.max=100 >"$dir/weed.log" 2>&1 &
pid=$!
read -r _ || true
kill -TERM "$pid" 2>/dev/null || true
wait "$pid" || true
"#,
        weed = weed.display(),
        dir = dir.display()
    );
    let shell = Command::new("sh")
        .args(["-c", &script])
        .current_dir("/")
        .stdin(Stdio::piped())
        .spawn()
        .expect("cannot start the S3 test server's shell");
    let server = S3 {
        endpoint: format!("http://127.0.0.1:{s3}"),
        port: s3,
        _shell: Mutex::new(shell),
    };
    // Ready once it creates a bucket (409: an earlier attempt created it, though its answer
    // was lost). Slow under a loaded test run: it starts a master, a volume server and a filer.
    let deadline = Instant::now() + Duration::from_secs(180);
    while !matches!(server.request("PUT", "/corral-ready"), Some(200 | 409)) {
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(dir.join("weed.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            panic!(
                "the S3 test server did not start on port {s3} within 180 s; its log, last \
                 lines first:\n{}",
                tail.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Some(server)
}

impl S3 {
    /// A plain HTTP request without a body; the status, if an answer came.
    pub fn request(&self, method: &str, path: &str) -> Option<u16> {
        let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)).ok()?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .ok()?;
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        )
        .ok()?;
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        answer.split_whitespace().nth(1)?.parse().ok()
    }

    /// A new, empty bucket; its name.
    pub fn bucket(&self, name: &str) -> String {
        let bucket = format!(
            "{name}-{}-{}",
            std::process::id(),
            BUCKETS.fetch_add(1, Ordering::Relaxed)
        );
        let status = self.request("PUT", &format!("/{bucket}"));
        assert_eq!(status, Some(200), "cannot create bucket {bucket}");
        bucket
    }

    /// The environment a `corral serve` process needs to reach this server.
    pub fn env(&self) -> [(&'static str, String); 5] {
        [
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID", "corral-test".into()),
            ("AWS_SECRET_ACCESS_KEY", "corral-test-secret".into()),
            ("AWS_ALLOW_HTTP", "true".into()),
        ]
    }
}

impl Drop for S3 {
    fn drop(&mut self) {
        if let Ok(mut shell) = self._shell.lock() {
            if let Some(stdin) = shell.stdin.as_mut() {
                let _ = stdin.write_all(b"stop\n");
            }
            let _ = shell.wait();
        }
    }
}
