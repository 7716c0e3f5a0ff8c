//! Single-tenant development mode (`corral run`): one component, its models, one listener.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::backends::models::{ModelFile, ModelFormat, ModelKey};
use crate::config::Config;
use crate::engine::log::GuestOutput;
use crate::engine::{self, EngineSettings, RequestSandbox, Service};
use crate::http::Target;
use crate::inference::{Inference, Model, ModelSet, Room};
use crate::limits::Limits;
use crate::nn::NnCtx;

/// What `corral run` serves.
#[derive(Clone, Debug)]
pub struct DevOptions {
    pub component: PathBuf,
    /// `(name, path)`: the names the guest passes to `load-by-name`.
    pub models: Vec<(String, PathBuf)>,
    pub listen: SocketAddr,
    pub engine: EngineSettings,
    pub limits: Limits,
    /// Let the guest write to the host's stdout/stderr.
    pub inherit_stdio: bool,
    /// Inference runs that may execute at once (`None`: `[inference] runs`' default, one per
    /// core).
    pub runs: Option<usize>,
}

/// A running development server.
#[derive(Debug)]
pub struct DevServer {
    addr: SocketAddr,
    models: Vec<(String, String)>,
    inference: Arc<Inference>,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl DevServer {
    /// Compiles the component, loads the models and starts listening. Every failure names the
    /// file or model at fault.
    pub async fn start(options: DevOptions) -> anyhow::Result<Self> {
        let engine = engine::new_engine(&options.engine)?;
        let component_path = options.component.clone();
        let compile_engine = engine.clone();
        let component =
            tokio::task::spawn_blocking(move || engine::compile(&compile_engine, &component_path))
                .await??;
        let mut config = Config::default();
        config.inference.runs = options.runs.unwrap_or(0);
        let inference = Arc::new(Inference::new(crate::server::inference_options(&config)));
        let model_files = options.models.clone();
        let loading = Arc::clone(&inference);
        let models =
            tokio::task::spawn_blocking(move || load_files(&loading, &model_files)).await??;
        let loaded = options
            .models
            .iter()
            .filter_map(|(name, _)| {
                models
                    .get(name)
                    .map(|m| (name.clone(), m.key.digest.to_string()))
            })
            .collect();
        let nn = NnCtx::new(Arc::new(models), Arc::clone(&inference), "");
        let service = Service::new(&engine, &component, nn)
            .with_context(|| format!("cannot serve {}", options.component.display()))?;
        let output = if options.inherit_stdio {
            GuestOutput::Inherit
        } else {
            GuestOutput::Discard
        };
        let target = Target {
            service: Arc::new(service),
            sandbox: RequestSandbox {
                limits: Arc::new(options.limits.clone()),
                stdout: output.clone(),
                stderr: output,
                outgoing_hosts: Arc::from([]),
                counters: Arc::default(),
            },
            gate: None,
        };
        let listener = TcpListener::bind(options.listen)
            .await
            .with_context(|| format!("cannot listen on {}", options.listen))?;
        let addr = listener.local_addr()?;
        let (shutdown, stopped) = oneshot::channel::<()>();
        let router = Arc::new(crate::http::SingleService(target));
        let listener = crate::http::listener::Listener {
            name: "http",
            socket: listener,
            tls: None,
            settings: crate::config::HttpSettings::default(),
            stats: Arc::default(),
        };
        let task = tokio::spawn(crate::http::serve(
            listener,
            router,
            async {
                let _ = stopped.await;
            },
            std::time::Duration::from_secs(10),
        ));
        Ok(Self {
            addr,
            models: loaded,
            inference,
            shutdown: Some(shutdown),
            task,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `(name, digest)` of every model served.
    pub fn models(&self) -> &[(String, String)] {
        &self.models
    }

    /// The inference layer (e.g. how many runs overlapped).
    pub fn inference(&self) -> &Inference {
        &self.inference
    }

    /// Stops accepting connections and waits for the accept loop to end.
    pub async fn stop(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        let _ = (&mut self.task).await;
    }
}

/// Loads `(name, path)` pairs into the model cache (so a bad file fails at start, naming it)
/// and returns the deployment's named models.
pub fn load_files(
    inference: &Inference,
    files: &[(String, std::path::PathBuf)],
) -> anyhow::Result<ModelSet> {
    let mut models = ModelSet::default();
    for (name, path) in files {
        let format = ModelFormat::from_path(path)?;
        let bytes = std::fs::read(path)
            .with_context(|| format!("cannot read model '{name}' from {}", path.display()))?;
        let digest = crate::store::Digest::of(&bytes);
        drop(bytes);
        let key = ModelKey { digest, format };
        let source = Arc::new(ModelFile {
            path: path.clone(),
            digest,
        });
        inference
            .cache()
            .load(key, &*source, Room::MakeRoom, "")
            .map_err(|e| anyhow::anyhow!("{}", e.to_inference().message))
            .with_context(|| format!("cannot load model '{name}' from {}", path.display()))?;
        tracing::info!(model = %name, %digest, path = %path.display(), "model loaded");
        let model = Model {
            name: name.clone(),
            key,
            source,
            hold: inference.cache().hold(key, ""),
            batch_axis: None,
        };
        if !models.insert(model) {
            anyhow::bail!("model name '{name}' is given twice");
        }
    }
    Ok(models)
}
