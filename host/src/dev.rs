//! Single-tenant development mode (`corral run`): one component, its models, one listener.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::backends::models::{ModelFormat, ModelKey};
use crate::config::Config;
use crate::deployment::{BuildError, DeploymentBuilder, ModelPart, Parts, Validation, load_models};
use crate::engine::log::GuestOutput;
use crate::engine::{self, EngineSettings, RequestSandbox};
use crate::http::Target;
use crate::inference::{Inference, ModelSet};
use crate::limits::Limits;
use crate::store::Digest;
use crate::store::records::DeploymentConfig;

/// What `corral run` serves.
#[derive(Clone, Debug)]
pub struct DevOptions {
    /// The component (`.wasm`) to serve.
    pub component: PathBuf,
    /// `(name, path)`: the names the guest passes to `load-by-name`.
    pub models: Vec<(String, PathBuf)>,
    /// Where to listen (port 0: any free port, see [`DevServer::addr`]).
    pub listen: SocketAddr,
    /// The wasmtime engine's settings.
    pub engine: EngineSettings,
    /// The limits every request runs under.
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
        let mut config = Config::default();
        config.inference.runs = options.runs.unwrap_or(0);
        let inference = Arc::new(Inference::new(crate::server::inference_options(&config)?));
        // The same builder as `corral serve`'s, without a cache of compiled components.
        let builder = DeploymentBuilder::new(engine, Arc::clone(&inference), None);
        let (component_path, files, limits) = (
            options.component.clone(),
            options.models.clone(),
            options.limits.clone(),
        );
        let (built, loaded) = tokio::task::spawn_blocking(move || {
            let bytes = std::fs::read(&component_path)
                .with_context(|| format!("cannot read component {}", component_path.display()))?;
            let models = model_parts(&files)?;
            let loaded: Vec<(String, String)> = models
                .iter()
                .map(|m| (m.name.clone(), m.key.digest.to_string()))
                .collect();
            let parts = Parts {
                component: Digest::of(&bytes),
                component_bytes: &|| Ok(bytes.clone()),
                models,
                config: &DeploymentConfig::default(),
            };
            let built = builder
                .build("", parts, Validation::Deploy(&limits))
                .map_err(|e| dev_error(e, &files))
                .with_context(|| format!("cannot serve {}", component_path.display()))?;
            anyhow::Ok((built, loaded))
        })
        .await??;
        let service = built.service;
        let output = if options.inherit_stdio {
            GuestOutput::Inherit
        } else {
            GuestOutput::Discard
        };
        let target = Target {
            service,
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

    /// The most inference runs that have overlapped so far (did batches or concurrent runs
    /// happen).
    pub fn peak_concurrent_runs(&self) -> usize {
        self.inference.peak_concurrent_runs()
    }

    /// Stops accepting connections and waits for the accept loop to end.
    pub async fn stop(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        let _ = (&mut self.task).await;
    }
}

/// Loads `(name, path)` pairs into the model cache the way `corral run` does (so a bad file
/// fails at start, naming it) and returns the deployment's named models.
pub fn load_files(inference: &Inference, files: &[(String, PathBuf)]) -> anyhow::Result<ModelSet> {
    let parts = model_parts(files)?;
    load_models(
        inference,
        "",
        &parts,
        &DeploymentConfig::default(),
        Validation::Deploy(&Limits::default()),
    )
    .map_err(|e| dev_error(e, files))
}

/// The model files as a deployment's parts: each one's format (from its extension) and
/// digest. Every failure names the file.
fn model_parts(files: &[(String, PathBuf)]) -> anyhow::Result<Vec<ModelPart>> {
    let mut parts: Vec<ModelPart> = Vec::with_capacity(files.len());
    for (name, path) in files {
        if parts.iter().any(|p| p.name == *name) {
            anyhow::bail!("model name '{name}' is given twice");
        }
        let format = ModelFormat::from_path(path)?;
        let bytes = std::fs::read(path)
            .with_context(|| format!("cannot read model '{name}' from {}", path.display()))?;
        let digest = Digest::of(&bytes);
        tracing::info!(model = %name, %digest, path = %path.display(), "model file read");
        parts.push(ModelPart {
            name: name.clone(),
            key: ModelKey { digest, format },
            path: path.clone(),
        });
    }
    Ok(parts)
}

/// A build failure with the file of the model at fault, when it names one.
fn dev_error(error: BuildError, files: &[(String, PathBuf)]) -> anyhow::Error {
    let model = match &error {
        BuildError::InvalidModel { name, .. }
        | BuildError::ExternalData { name, .. }
        | BuildError::ModelLoad { name, .. }
        | BuildError::ModelTooLarge { name, .. }
        | BuildError::ModelsBusy { name, .. } => Some(name.clone()),
        _ => None,
    };
    let path = model
        .as_ref()
        .and_then(|name| files.iter().find(|(n, _)| n == name).map(|(_, p)| p));
    match (model, path) {
        (Some(name), Some(path)) => anyhow::Error::new(error).context(format!(
            "cannot load model '{name}' from {}",
            path.display()
        )),
        _ => anyhow::Error::new(error),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests/fixtures")
            .join(name)
    }

    fn inference() -> Inference {
        Inference::new(crate::server::inference_options(&Config::default()).unwrap())
    }

    #[test]
    fn identical_model_files_share_one_loaded_model() {
        let inference = inference();
        let models = load_files(
            &inference,
            &[
                ("first".into(), fixture("add.onnx")),
                ("second".into(), fixture("add.onnx")),
                ("other".into(), fixture("identity_types.onnx")),
            ],
        )
        .expect("fixtures load");
        assert_eq!(inference.cache().residents().len(), 2);
        assert_eq!(inference.cache().loads_total(), 2);
        assert_eq!(
            models.get("first").unwrap().key,
            models.get("second").unwrap().key
        );
    }

    #[test]
    fn a_model_that_is_not_onnx_is_refused_naming_the_file() {
        let inference = inference();
        let err = load_files(&inference, &[("m".into(), fixture("make_models.py"))]).unwrap_err();
        assert!(format!("{err:#}").contains("make_models.py"), "{err:#}");
        let not_a_model =
            std::env::temp_dir().join(format!("corral-not-a-model-{}.onnx", std::process::id()));
        std::fs::write(&not_a_model, b"definitely not protobuf").unwrap();
        let err = load_files(&inference, &[("m".into(), not_a_model.clone())]).unwrap_err();
        let _ = std::fs::remove_file(&not_a_model);
        let message = format!("{err:#}");
        assert!(
            message.contains("model 'm'") && message.contains("cannot load"),
            "{message}"
        );
    }
}
