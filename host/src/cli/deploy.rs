//! `corral deploy`: upload a component and its models as a tenant's new active deployment
//! (models alone: Corral's built-in `inference` component serves them over the Open Inference
//! Protocol).

use std::path::PathBuf;

use anyhow::Context;

use super::output::{print_json, version};
use super::{ClientArgs, parse_model};
use crate::client::{AdminClient, Component};

#[derive(Debug, clap::Args)]
pub(crate) struct DeployArgs {
    /// The tenant to deploy to.
    #[arg(long)]
    pub tenant: String,
    /// The component (.wasm) to serve. Without one, Corral's built-in `inference` component
    /// serves the models over the Open Inference Protocol (`/v2/models/NAME/infer`), or the
    /// built-in `--builtin` names.
    pub component: Option<PathBuf>,
    /// A built-in component instead of a file: `inference` (the Open Inference Protocol) or
    /// `image-classification` (set up by the config's `component` section).
    #[arg(long, value_name = "NAME", conflicts_with = "component")]
    pub builtin: Option<String>,
    /// A model the component loads by name: NAME=PATH (repeatable). PATH ends in .onnx (or
    /// .pt, .torchscript).
    #[arg(long = "model", value_name = "NAME=PATH", value_parser = parse_model)]
    pub models: Vec<(String, PathBuf)>,
    /// The deployment's settings, a JSON file: batching overrides and TorchScript batch axes
    /// (docs/config.md, "Per deployment").
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub client: ClientArgs,
}

pub(super) async fn deploy(args: DeployArgs) -> anyhow::Result<()> {
    let api = AdminClient::new(&args.client.server, args.client.token)?;
    if args.component.is_none() && args.builtin.is_none() && args.models.is_empty() {
        anyhow::bail!(
            "give a component (.wasm), or at least one --model NAME=PATH for the built-in \
             inference component to serve"
        );
    }
    for (name, path) in &args.models {
        crate::backends::models::ModelFormat::from_path(path)
            .with_context(|| format!("--model {name}={}", path.display()))?;
    }
    let answer = api
        .deploy(
            &args.tenant,
            match (&args.component, &args.builtin) {
                (Some(path), _) => Some(Component::File(path)),
                (None, Some(name)) => Some(Component::Builtin(name)),
                (None, None) => None,
            },
            &args.models,
            args.config.as_deref(),
        )
        .await?;
    if args.client.json {
        return print_json(&answer);
    }
    println!(
        "deployed '{}' version {} (active)",
        args.tenant,
        version(&answer["version"])
    );
    println!(
        "  component {}",
        answer["component"].as_str().unwrap_or_default()
    );
    if let Some(models) = answer["models"].as_object() {
        for (name, digest) in models {
            println!("  model {name} {}", digest.as_str().unwrap_or_default());
        }
    }
    for url in answer["urls"].as_array().into_iter().flatten() {
        println!("  call it: curl {}", url.as_str().unwrap_or_default());
    }
    Ok(())
}
