//! Corral's `wasi:nn` host implementation (`wasi:nn@0.2.0-rc-2024-10-28`).
//!
//! Guarantees, for any guest input:
//! - `load-by-name` sees only the models of the calling instance's deployment;
//! - `load` (model bytes from guest memory) is refused with `security`;
//! - every mistake (unknown model or input name, wrong type, rank or shape, data length not
//!   matching dimensions × element size, dimensions whose product overflows) is a `wasi:nn`
//!   error value, never a trap or a host panic;
//! - `compute` is a job for the shared inference layer ([`Inference`]): the model is loaded
//!   on first use under the memory budget, and the job is scheduled fairly among all tenants'
//!   jobs and batched with other jobs of the same model; it never blocks an async worker. A
//!   tenant with `nn_queued_runs` jobs already waiting is stopped with `503 overloaded`;
//! - input bytes move into the session without a copy; output bytes are copied once, when the
//!   guest reads them;
//! - every call counts against the request's [`NnBudget`]: calls; bytes the host takes in,
//!   holds or copies out for the guest (tensor data and dimension lists, model and input
//!   names, every `tensor.data` copy) per call and per request; live resources. A guest over
//!   it is trapped with the limit named. A tensor over the tenant's rank limit traps at
//!   `tensor.new`; one over its element limit is refused with `invalid-argument` before any
//!   backend sees it. Error messages the host keeps for the guest are cut to 1 KiB, and
//!   guest-given names in them to 128 bytes.

use std::sync::Arc;

use wasmtime::component::{HasData, Linker, Resource, ResourceTable};

use crate::backends::tensor::{ElementType, Tensor, TensorBytes};
use crate::backends::{ErrorKind, InferenceError};
use crate::inference::Registrations;
use crate::inference::{Inference, Model, ModelSet, RunError, Submission};
use crate::limits::Outcome;
use crate::limits::{LimitHit, Limits};

mod generated {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "corral:service/nn-models",
        imports: {
            "wasi:nn/inference.[method]graph-execution-context.compute": async | trappable,
            "corral:service/models.describe": async | trappable,
            default: trappable,
        },
        with: {
            "wasi:nn/graph.graph": super::Graph,
            "wasi:nn/tensor.tensor": crate::backends::tensor::Tensor,
            "wasi:nn/inference.graph-execution-context": super::ExecutionContext,
            "wasi:nn/errors.error": crate::backends::InferenceError,
        },
    });
}

use generated::corral::service::models as models_interface;
use generated::wasi::nn::{errors, graph, inference, tensor};

mod models;

/// A loaded graph: the guest's handle on one of its deployment's models.
#[derive(Debug)]
pub struct Graph(Arc<Model>);

/// An execution context for a graph. Holds no per-run state: runs share the model's session.
#[derive(Debug)]
pub struct ExecutionContext(Arc<Model>);

/// What one instance may reach through `wasi:nn`: its deployment's models and the shared
/// inference layer, as its tenant.
#[derive(Clone, Debug)]
pub struct NnCtx {
    models: Arc<ModelSet>,
    inference: Arc<Inference>,
    tenant: Arc<str>,
    /// The deployment's configuration as JSON (`corral:service/models.config`).
    config: Option<Arc<str>>,
    /// Registers the tenant with the scheduler while the deployment has models.
    _registration: Option<Arc<Registrations>>,
}

impl NnCtx {
    /// The `wasi:nn` context of a deployment of `tenant`.
    pub fn new(models: Arc<ModelSet>, inference: Arc<Inference>, tenant: &str) -> Self {
        let registration =
            (models.iter().next().is_some()).then(|| Arc::new(inference.register(tenant)));
        Self {
            models,
            inference,
            tenant: Arc::from(tenant),
            config: None,
            _registration: registration,
        }
    }

    /// With the deployment's configuration, as JSON, for guests that ask for it.
    pub fn with_config(mut self, config: Option<String>) -> Self {
        self.config = config.map(Arc::from);
        self
    }

    pub fn models(&self) -> &ModelSet {
        &self.models
    }
}

/// What one request may still do through `wasi:nn`.
#[derive(Debug)]
pub struct NnBudget {
    limits: Arc<Limits>,
    outcome: Arc<Outcome>,
    calls: u32,
    bytes: u64,
    /// `wasi:nn` resources the guest holds now.
    resources: u32,
    /// The request's slot in its tenant's gate, held by every run it starts.
    slot: Option<Arc<dyn std::any::Any + Send + Sync>>,
}

impl NnBudget {
    pub fn new(
        limits: Arc<Limits>,
        outcome: Arc<Outcome>,
        slot: Option<Arc<dyn std::any::Any + Send + Sync>>,
    ) -> Self {
        Self {
            limits,
            outcome,
            calls: 0,
            bytes: 0,
            resources: 0,
            slot,
        }
    }

    /// Counts one call; traps past the per-request call limit.
    fn call(&mut self) -> wasmtime::Result<()> {
        self.calls = self.calls.saturating_add(1);
        if self.calls > self.limits.nn_calls_per_request {
            return Err(self.outcome.trap(LimitHit::NnCalls, &self.limits));
        }
        Ok(())
    }

    /// Counts tensors of `lens` bytes the host takes in or holds for the guest (inputs from
    /// `tensor.new`, backend outputs); traps when one is over the per-call limit or the
    /// request's total is over the per-request limit. Each tensor is counted once.
    fn hold(&mut self, lens: impl IntoIterator<Item = usize>) -> wasmtime::Result<()> {
        for len in lens {
            self.check_call(len)?;
            self.bytes = self.bytes.saturating_add(len as u64);
        }
        if self.bytes > self.limits.nn_bytes_per_request {
            return Err(self.outcome.trap(LimitHit::NnBytes, &self.limits));
        }
        Ok(())
    }

    /// Counts one more live resource; traps past the per-request limit.
    fn add_resource(&mut self) -> wasmtime::Result<()> {
        self.resources = self.resources.saturating_add(1);
        if self.resources > self.limits.nn_resources_per_request {
            return Err(self.outcome.trap(LimitHit::NnResources, &self.limits));
        }
        Ok(())
    }

    fn remove_resource(&mut self) {
        self.resources = self.resources.saturating_sub(1);
    }

    /// Traps when one copy of `len` bytes is over the per-call limit.
    fn check_call(&self, len: usize) -> wasmtime::Result<()> {
        if len as u64 > self.limits.nn_bytes_per_call {
            return Err(self.outcome.trap(LimitHit::NnBytes, &self.limits));
        }
        Ok(())
    }

    /// Traps on a tensor over the tenant's rank limit: its dimension list is what the host
    /// would hold.
    fn check_rank(&self, rank: usize) -> wasmtime::Result<()> {
        if rank > self.limits.tensor_rank as usize {
            return Err(self.outcome.trap(LimitHit::NnRank, &self.limits));
        }
        Ok(())
    }

    /// Refuses a tensor over the tenant's element limit.
    fn check_tensor(&self, name: &str, tensor: &Tensor) -> Result<(), InferenceError> {
        let name = shown(name);
        let elements = crate::backends::tensor::element_count(&tensor.shape);
        match elements {
            Some(n) if n <= self.limits.tensor_elements => Ok(()),
            Some(_) => Err(InferenceError::invalid(format!(
                "tensor '{name}' with dimensions {:?} has more than this service's limit of {} elements",
                tensor.shape, self.limits.tensor_elements
            ))),
            None => Err(InferenceError::invalid(format!(
                "tensor '{name}': the element count of dimensions {:?} overflows",
                tensor.shape
            ))),
        }
    }
}

/// A borrowed view of an instance's `wasi:nn` state, as the generated host traits want it.
pub struct NnView<'a> {
    pub ctx: &'a NnCtx,
    pub budget: &'a mut NnBudget,
    pub table: &'a mut ResourceTable,
}

struct Nn;

impl HasData for Nn {
    type Data<'a> = NnView<'a>;
}

/// Adds the `wasi:nn` imports to `linker`.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    view: fn(&mut T) -> NnView<'_>,
) -> wasmtime::Result<()> {
    tensor::add_to_linker::<T, Nn>(linker, view)?;
    graph::add_to_linker::<T, Nn>(linker, view)?;
    inference::add_to_linker::<T, Nn>(linker, view)?;
    errors::add_to_linker::<T, Nn>(linker, view)?;
    models_interface::add_to_linker::<T, Nn>(linker, view)?;
    Ok(())
}

type NnResult<T> = wasmtime::Result<Result<T, Resource<InferenceError>>>;

/// How much of an error message the host keeps for the guest: messages echo guest-given names.
const MAX_ERROR_MESSAGE: usize = 1024;
/// How much of a guest-given name an error message repeats.
const MAX_SHOWN_NAME: usize = 128;

/// `name` cut to [`MAX_SHOWN_NAME`] bytes (at a character boundary) for an error message.
fn shown(name: &str) -> std::borrow::Cow<'_, str> {
    if name.len() <= MAX_SHOWN_NAME {
        return name.into();
    }
    let end = name.floor_char_boundary(MAX_SHOWN_NAME);
    format!("{}... ({} bytes)", &name[..end], name.len()).into()
}

impl NnView<'_> {
    /// Hands `error` to the guest as an `error` resource, its message cut short.
    fn fail<T>(&mut self, mut error: InferenceError) -> NnResult<T> {
        if error.message.len() > MAX_ERROR_MESSAGE {
            let end = error.message.floor_char_boundary(MAX_ERROR_MESSAGE);
            error.message.truncate(end);
            error.message.push_str("...");
        }
        tracing::debug!(kind = ?error.kind, message = %error.message, "wasi:nn error returned to guest");
        Ok(Err(self.push(error)?))
    }

    /// Puts a resource in the table, counting it against the request's budget.
    fn push<T: Send + 'static>(&mut self, value: T) -> wasmtime::Result<Resource<T>> {
        self.budget.add_resource()?;
        Ok(self.table.push(value)?)
    }

    /// Takes a resource out of the table.
    fn delete<T: 'static>(&mut self, resource: Resource<T>) -> wasmtime::Result<T> {
        let value = self.table.delete(resource)?;
        self.budget.remove_resource();
        Ok(value)
    }
}

impl tensor::Host for NnView<'_> {}

impl tensor::HostTensor for NnView<'_> {
    fn new(
        &mut self,
        dimensions: Vec<u32>,
        ty: tensor::TensorType,
        data: Vec<u8>,
    ) -> wasmtime::Result<Resource<Tensor>> {
        self.budget.call()?;
        self.budget.check_rank(dimensions.len())?;
        self.budget
            .hold([data.len(), std::mem::size_of_val(dimensions.as_slice())])?;
        let tensor = Tensor {
            shape: dimensions,
            ty: element_type(ty),
            bytes: TensorBytes::Host(data),
        };
        self.push(tensor)
    }

    fn dimensions(&mut self, tensor: Resource<Tensor>) -> wasmtime::Result<Vec<u32>> {
        self.budget.call()?;
        Ok(self.table.get(&tensor)?.shape.clone())
    }

    fn ty(&mut self, tensor: Resource<Tensor>) -> wasmtime::Result<tensor::TensorType> {
        self.budget.call()?;
        Ok(tensor_type(self.table.get(&tensor)?.ty))
    }

    fn data(&mut self, tensor: Resource<Tensor>) -> wasmtime::Result<Vec<u8>> {
        self.budget.call()?;
        // The tensor was counted when it was made or produced; reading it copies it once more,
        // and every copy counts.
        let len = self.table.get(&tensor)?.bytes.as_slice().len();
        self.budget.hold([len])?;
        Ok(self.table.get(&tensor)?.bytes.as_slice().to_vec())
    }

    fn drop(&mut self, tensor: Resource<Tensor>) -> wasmtime::Result<()> {
        self.delete(tensor)?;
        Ok(())
    }
}

impl graph::Host for NnView<'_> {
    fn load(
        &mut self,
        _builder: Vec<Vec<u8>>,
        _encoding: graph::GraphEncoding,
        _target: graph::ExecutionTarget,
    ) -> NnResult<Resource<Graph>> {
        self.budget.call()?;
        self.fail(InferenceError::new(
            ErrorKind::Security,
            "loading a model from guest memory is not allowed on this host; \
             deploy the model with the component and use load-by-name",
        ))
    }

    fn load_by_name(&mut self, name: String) -> NnResult<Resource<Graph>> {
        self.budget.call()?;
        self.budget.hold([name.len()])?;
        match self.ctx.models.get(&name) {
            Some(model) => Ok(Ok(self.push(Graph(model))?)),
            None => {
                let name = shown(&name);
                let mut known: Vec<&str> = self.ctx.models.names().collect();
                known.sort_unstable();
                let message = if known.is_empty() {
                    format!("no model named '{name}': this deployment has no models")
                } else {
                    format!(
                        "no model named '{name}' in this deployment; its models are: {}",
                        known.join(", ")
                    )
                };
                self.fail(InferenceError::new(ErrorKind::NotFound, message))
            }
        }
    }
}

impl graph::HostGraph for NnView<'_> {
    fn init_execution_context(
        &mut self,
        graph: Resource<Graph>,
    ) -> NnResult<Resource<ExecutionContext>> {
        self.budget.call()?;
        let model = Arc::clone(&self.table.get(&graph)?.0);
        Ok(Ok(self.push(ExecutionContext(model))?))
    }

    fn drop(&mut self, graph: Resource<Graph>) -> wasmtime::Result<()> {
        self.delete(graph)?;
        Ok(())
    }
}

impl inference::Host for NnView<'_> {}

impl inference::HostGraphExecutionContext for NnView<'_> {
    async fn compute(
        &mut self,
        context: Resource<ExecutionContext>,
        inputs: Vec<(String, Resource<Tensor>)>,
    ) -> NnResult<Vec<(String, Resource<Tensor>)>> {
        self.budget.call()?;
        let model = Arc::clone(&self.table.get(&context)?.0);
        // The names are the guest's: they count against its bytes.
        self.budget
            .hold(inputs.iter().map(|(name, _)| name.len()))?;
        // The tensors are owned handles passed to us: take them out of the table without copying.
        let mut tensors = Vec::with_capacity(inputs.len());
        for (name, handle) in inputs {
            tensors.push((name, self.delete(handle)?));
        }
        for (name, tensor) in &tensors {
            if let Err(error) = self.budget.check_tensor(name, tensor) {
                return self.fail(error);
            }
        }
        let loaded = match self.ctx.inference.loaded(&model, &self.ctx.tenant).await {
            Ok(loaded) => loaded,
            Err(error) => return self.fail(error),
        };
        let limits = &self.budget.limits;
        let (max_batch_size, max_delay) = self.ctx.inference.batching();
        let submission = Submission {
            tenant: Arc::clone(&self.ctx.tenant),
            weight: limits.compute_weight,
            queue_bound: limits.nn_queued_runs,
            max_batch_size: self.ctx.models.max_batch_size.unwrap_or(max_batch_size),
            max_delay: self.ctx.models.max_delay.unwrap_or(max_delay),
            batch_axis: model.batch_axis,
            keep_alive: self.budget.slot.clone(),
        };
        match self
            .ctx
            .inference
            .run(&model, loaded, submission, tensors)
            .await
        {
            Err(RunError::QueueFull) => Err(self
                .budget
                .outcome
                .trap(LimitHit::NnQueue, &self.budget.limits)),
            Ok(outputs) => {
                // Outputs live in the host until the request ends: they count against the
                // request's bytes whether or not the guest reads them.
                self.budget
                    .hold(outputs.iter().map(|(_, t)| t.bytes.as_slice().len()))?;
                let mut handles = Vec::with_capacity(outputs.len());
                for (name, tensor) in outputs {
                    handles.push((name, self.push(tensor)?));
                }
                Ok(Ok(handles))
            }
            Err(RunError::Failed(error)) => self.fail(error),
        }
    }

    fn drop(&mut self, context: Resource<ExecutionContext>) -> wasmtime::Result<()> {
        self.delete(context)?;
        Ok(())
    }
}

impl errors::Host for NnView<'_> {}

impl errors::HostError for NnView<'_> {
    fn code(&mut self, error: Resource<InferenceError>) -> wasmtime::Result<errors::ErrorCode> {
        self.budget.call()?;
        Ok(match self.table.get(&error)?.kind {
            ErrorKind::InvalidArgument => errors::ErrorCode::InvalidArgument,
            ErrorKind::InvalidEncoding => errors::ErrorCode::InvalidEncoding,
            ErrorKind::RuntimeError => errors::ErrorCode::RuntimeError,
            ErrorKind::UnsupportedOperation => errors::ErrorCode::UnsupportedOperation,
            ErrorKind::NotFound => errors::ErrorCode::NotFound,
            ErrorKind::Security => errors::ErrorCode::Security,
        })
    }

    fn data(&mut self, error: Resource<InferenceError>) -> wasmtime::Result<String> {
        self.budget.call()?;
        Ok(self.table.get(&error)?.message.clone())
    }

    fn drop(&mut self, error: Resource<InferenceError>) -> wasmtime::Result<()> {
        self.delete(error)?;
        Ok(())
    }
}

fn element_type(ty: tensor::TensorType) -> ElementType {
    match ty {
        tensor::TensorType::Fp16 => ElementType::F16,
        tensor::TensorType::Fp32 => ElementType::F32,
        tensor::TensorType::Fp64 => ElementType::F64,
        tensor::TensorType::Bf16 => ElementType::Bf16,
        tensor::TensorType::U8 => ElementType::U8,
        tensor::TensorType::I32 => ElementType::I32,
        tensor::TensorType::I64 => ElementType::I64,
    }
}

fn tensor_type(ty: ElementType) -> tensor::TensorType {
    match ty {
        ElementType::F16 => tensor::TensorType::Fp16,
        ElementType::F32 => tensor::TensorType::Fp32,
        ElementType::F64 => tensor::TensorType::Fp64,
        ElementType::Bf16 => tensor::TensorType::Bf16,
        ElementType::U8 => tensor::TensorType::U8,
        ElementType::I32 => tensor::TensorType::I32,
        ElementType::I64 => tensor::TensorType::I64,
    }
}
