//! `corral:service/models@0.1.0`: what a deployment's models take and give, and its
//! configuration, for guests that ask (Corral's own interface beside `wasi:nn`).
//!
//! Everything handed to the guest counts against the request's `wasi:nn` budget like tensor
//! data: a call, and the bytes copied out (names, dimension lists, the configuration).

use std::sync::Arc;

use wasmtime::component::Resource;

use super::models_interface::{GraphMetadata, Host, TensorInfo};
use super::{Graph, NnResult, NnView, tensor_type};
use crate::backends::TensorSpec;

/// Bytes a `tensor-info` costs the guest besides its name: the element type and each
/// dimension (an `option<u32>`, 8 bytes in guest memory).
fn info_bytes(spec: &TensorSpec) -> usize {
    spec.name.len() + 8 + spec.shape.len() * 8
}

fn info(spec: &TensorSpec) -> TensorInfo {
    TensorInfo {
        name: spec.name.clone(),
        datatype: spec.ty.map(tensor_type),
        shape: spec.shape.clone(),
    }
}

impl Host for NnView<'_> {
    fn names(&mut self) -> wasmtime::Result<Vec<String>> {
        self.budget.call()?;
        let mut names: Vec<String> = self.ctx.models.names().map(str::to_owned).collect();
        names.sort_unstable();
        self.budget.hold(names.iter().map(|n| n.len() + 8))?;
        Ok(names)
    }

    async fn describe(&mut self, graph: Resource<Graph>) -> NnResult<GraphMetadata> {
        self.budget.call()?;
        let model = Arc::clone(&self.table.get(&graph)?.0);
        let loaded = match self.ctx.inference.loaded(&model, &self.ctx.tenant).await {
            Ok(loaded) => loaded,
            Err(error) => return self.fail(error),
        };
        let signature = loaded.signature();
        let specs = signature.inputs.iter().chain(&signature.outputs);
        // Counted before anything is copied: a model with a huge signature is the guest's to
        // pay for, up to its limits.
        self.budget.hold([specs.map(info_bytes).sum()])?;
        Ok(Ok(GraphMetadata {
            inputs: signature.inputs.iter().map(info).collect(),
            outputs: signature.outputs.iter().map(info).collect(),
        }))
    }

    fn config(&mut self) -> wasmtime::Result<Option<String>> {
        self.budget.call()?;
        let config = self.ctx.config.as_deref().map(str::to_owned);
        self.budget.hold([config.as_ref().map_or(0, String::len)])?;
        Ok(config)
    }
}
