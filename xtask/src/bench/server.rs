//! Process control for the servers under test: starting and stopping them, `corral serve`
//! on a fresh data directory with its tenants, and reading a server's memory and metrics.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::Kit;
use super::load::{AsRefOsStr, probe};
use super::report::describe;
use crate::{Result, guest_dir, ort_library};

pub(super) fn free_addr() -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    listener.local_addr().map_err(|e| e.to_string())
}

/// A server under test, killed when dropped.
pub(super) struct Server {
    child: Child,
    name: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Starts `command` with its output in `work/logs/NAME.log` and waits until `addr`
    /// accepts connections.
    pub(super) fn start(
        kit: &mut Kit,
        name: &str,
        command: &mut Command,
        addr: SocketAddr,
    ) -> Result<Self> {
        let logs = kit.work.join("logs");
        std::fs::create_dir_all(&logs).map_err(|e| e.to_string())?;
        let log =
            std::fs::File::create(logs.join(format!("{name}.log"))).map_err(|e| e.to_string())?;
        let log2 = log.try_clone().map_err(|e| e.to_string())?;
        kit.commands.push(describe(command));
        let child = command
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| format!("cannot start {name}: {e}"))?;
        let mut server = Self {
            child,
            name: name.to_owned(),
        };
        let deadline = Instant::now() + Duration::from_secs(120);
        while TcpStream::connect(addr).is_err() {
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(format!(
                    "{name} exited ({status}) before listening; see {}",
                    logs.join(format!("{name}.log")).display()
                ));
            }
            if Instant::now() > deadline {
                return Err(format!("{name} did not listen on {addr} within 120 s"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(server)
    }

    pub(super) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory in MiB.
    pub(super) fn rss_mib(&self) -> Result<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .map_err(|e| format!("{}: {e}", self.name))?;
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kib| kib.parse::<f64>().ok())
            .map(|kib| kib / 1024.0)
            .ok_or_else(|| format!("{}: no VmRSS", self.name))
    }
}

/// `corral serve` on a fresh data directory with no HTTPS, and its operator token.
pub(super) struct Corral {
    pub(super) server: Server,
    pub(super) data: SocketAddr,
    pub(super) admin: String,
    pub(super) token: String,
    pub(super) dir: PathBuf,
}

impl Corral {
    pub(super) fn start(kit: &mut Kit, name: &str) -> Result<Self> {
        let dir = kit.work.join(format!("data-{name}"));
        let _ = std::fs::remove_dir_all(&dir);
        Self::start_in(kit, name, dir)
    }

    /// [`Corral::start`] with extra environment variables (configuration overrides).
    pub(super) fn start_with(kit: &mut Kit, name: &str, env: &[(&str, &str)]) -> Result<Self> {
        let dir = kit.work.join(format!("data-{name}"));
        let _ = std::fs::remove_dir_all(&dir);
        Self::launch(kit, name, dir, env)
    }

    /// Starts (or restarts) a server on `dir`, keeping what is stored there.
    pub(super) fn start_in(kit: &mut Kit, name: &str, dir: PathBuf) -> Result<Self> {
        Self::launch(kit, name, dir, &[])
    }

    /// [`Corral::start_in`] with extra environment variables.
    pub(super) fn start_in_with(
        kit: &mut Kit,
        name: &str,
        dir: PathBuf,
        env: &[(&str, &str)],
    ) -> Result<Self> {
        Self::launch(kit, name, dir, env)
    }

    fn launch(kit: &mut Kit, name: &str, dir: PathBuf, env: &[(&str, &str)]) -> Result<Self> {
        let (data, admin) = (free_addr()?, free_addr()?);
        let mut command = Command::new(&kit.corral);
        command
            .args(["serve", "--data"])
            .arg(&dir)
            .arg("--listen")
            .arg(data.to_string())
            .arg("--admin-listen")
            .arg(admin.to_string())
            .env("CORRAL_TLS_ENABLED", "false")
            .env("RUST_LOG", "warn")
            .env("ORT_DYLIB_PATH", ort_library());
        for (key, value) in env {
            command.env(key, value);
        }
        let server = Server::start(kit, name, &mut command, admin)?;
        // A token given (cluster mode) is not written to the data directory.
        let token = match env.iter().find(|(key, _)| *key == "CORRAL_ADMIN_TOKEN") {
            Some((_, token)) => (*token).to_owned(),
            None => std::fs::read_to_string(dir.join("admin-token"))
                .map_err(|e| format!("{}: {e}", dir.join("admin-token").display()))?
                .trim()
                .to_owned(),
        };
        Ok(Self {
            server,
            data,
            admin: format!("http://{admin}"),
            token,
            dir,
        })
    }

    /// Creates tenants `tFROM..tTO` with `component` and the model.
    pub(super) fn tenants(
        &self,
        kit: &mut Kit,
        range: std::ops::Range<usize>,
        component: &Path,
        model: &str,
        distinct: bool,
    ) -> Result<f64> {
        let scratch = kit.work.join("distinct");
        std::fs::create_dir_all(&scratch).map_err(|e| e.to_string())?;
        let (from, to) = (range.start.to_string(), range.end.to_string());
        let mut args: Vec<&dyn AsRefOsStr> = vec![
            &"tenants",
            &self.admin,
            &self.token,
            &from,
            &to,
            &component,
            &model,
        ];
        if distinct {
            args.push(&scratch);
        }
        let out = probe(kit, &args)?;
        Ok(out
            .first()
            .and_then(|v| v["seconds"].as_f64())
            .unwrap_or(0.0))
    }
}

pub(super) fn guest(name: &str) -> PathBuf {
    guest_dir().join(format!("{name}.wasm"))
}

/// The `/metrics` text of the admin API at `admin` (`http://ADDR`).
pub(super) fn metrics(admin: &str) -> Result<String> {
    let addr = admin.trim_start_matches("http://");
    let mut stream = TcpStream::connect(addr).map_err(|e| format!("{addr}: {e}"))?;
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut text = String::new();
    stream
        .read_to_string(&mut text)
        .map_err(|e| e.to_string())?;
    Ok(text)
}

/// The sum of every series of `name` (any labels) in a metrics text.
pub(super) fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Waits until `admin`'s `/readyz` answers 200; the time since `started`.
pub(super) fn until_ready(admin: &str, started: Instant) -> Result<Duration> {
    let addr = admin.trim_start_matches("http://");
    loop {
        let ready = TcpStream::connect(addr).ok().and_then(|mut stream| {
            write!(
                stream,
                "GET /readyz HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n"
            )
            .ok()?;
            let mut text = String::new();
            stream.read_to_string(&mut text).ok()?;
            Some(text.starts_with("HTTP/1.1 200"))
        });
        if ready == Some(true) {
            return Ok(started.elapsed());
        }
        if started.elapsed() > Duration::from_secs(1800) {
            return Err(format!("{admin} not ready within 30 minutes"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
