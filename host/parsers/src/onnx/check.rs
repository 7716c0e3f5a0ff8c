//! Upload-time checks on an ONNX file, before ONNX Runtime sees it.
//!
//! An ONNX tensor may keep its data in another file (`data_location = EXTERNAL`), which ONNX
//! Runtime would open relative to the model's folder (for a model loaded from memory, the
//! process's working directory). Uploaded models must be self-contained, so any tensor that
//! points outside the file is refused, wherever it sits.
//!
//! The walk is an allow-list over the whole ONNX schema (`onnx.proto` of onnx 1.23, IR version 14): every
//! message is decoded with its complete table of fields, every nested message is followed, and
//! a length-delimited field that is not in the table (a message this version of Corral does not
//! know, which could hold a tensor) is refused rather than skipped. So the next place the
//! schema grows a tensor is refused by default until it is added here. Tensors are found in
//! graph initializers and sparse initializers, node attributes and their sub-graphs at any
//! depth, function bodies and function default attributes, and training info.
//!
//! This walks the protobuf wire format directly: nesting is bounded, and malformed input is an
//! error, never a panic. It allocates nothing but the name of a refused tensor.

/// Why a model file is refused.
#[derive(Debug, PartialEq, Eq)]
pub enum ModelCheckError {
    /// A tensor's data lives in another file.
    ExternalData(String),
    /// The bytes are not a well-formed ONNX protobuf, or use a field Corral cannot check.
    Malformed(String),
}

impl std::fmt::Display for ModelCheckError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::ExternalData(tensor) => write!(
                f,
                "tensor '{tensor}' keeps its data in an external file; upload a self-contained \
                 model (e.g. onnx.save_model(model, path, save_as_external_data=False))"
            ),
            Self::Malformed(why) => write!(f, "the file is not a valid ONNX model: {why}"),
        }
    }
}

/// Refuses a model whose tensors reference external data, or that uses a field of the ONNX
/// schema this check does not know.
pub fn check_self_contained(bytes: &[u8]) -> Result<(), ModelCheckError> {
    walk(bytes, Message::Model, 0)
}

/// Every message of the ONNX schema that a model file can contain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Message {
    Model,
    Graph,
    Node,
    Attribute,
    Tensor,
    TensorSegment,
    SparseTensor,
    Function,
    TrainingInfo,
    ValueInfo,
    Type,
    TypeTensor,
    TypeSequence,
    TypeMap,
    TypeOptional,
    TypeOpaque,
    TensorShape,
    Dimension,
    StringStringEntry,
    OperatorSetId,
    TensorAnnotation,
    DeviceConfiguration,
    NodeDeviceConfiguration,
    ShardingSpec,
    ShardedDim,
    SimpleShardedDim,
    IntIntListEntry,
}

/// What a field of a message is, for the walk.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Field {
    /// A scalar, string or bytes (or a packed list of scalars): holds no tensor.
    Plain,
    /// A nested message, walked.
    Message(Message),
    /// Not in the schema.
    Unknown,
}

const MAX_DEPTH: usize = 64;
/// How much of a refused tensor's name the error repeats.
const MAX_NAME: usize = 200;

impl Message {
    /// The complete field table of each message (from `onnx.proto`).
    fn field(self, number: u64) -> Field {
        use Field::{Message as M, Plain, Unknown};
        use Message::*;
        match (self, number) {
            (Model, 1..=6) => Plain,
            (Model, 14) => M(StringStringEntry),
            (Model, 7) => M(Graph),
            (Model, 8) => M(OperatorSetId),
            (Model, 20) => M(TrainingInfo),
            (Model, 25) => M(Function),
            (Model, 26) => M(DeviceConfiguration),

            (Graph, 2 | 10) => Plain,
            (Graph, 1) => M(Node),
            (Graph, 5) => M(Tensor),
            (Graph, 15) => M(SparseTensor),
            (Graph, 11..=13) => M(ValueInfo),
            (Graph, 14) => M(TensorAnnotation),
            (Graph, 16) => M(StringStringEntry),

            (Node, 1..=4 | 6..=8) => Plain,
            (Node, 5) => M(Attribute),
            (Node, 9) => M(StringStringEntry),
            (Node, 10) => M(NodeDeviceConfiguration),

            (Attribute, 1..=4 | 7..=9 | 13 | 20 | 21) => Plain,
            (Attribute, 5 | 10) => M(Tensor),
            (Attribute, 6 | 11) => M(Graph),
            (Attribute, 14 | 15) => M(Type),
            (Attribute, 22 | 23) => M(SparseTensor),

            (Tensor, 1 | 2 | 4..=12 | 14) => Plain,
            (Tensor, 3) => M(TensorSegment),
            (Tensor, 13 | 16) => M(StringStringEntry),
            (TensorSegment, 1 | 2) => Plain,

            (SparseTensor, 1 | 2) => M(Tensor),
            (SparseTensor, 3) => Plain,

            (Function, 1 | 4..=6 | 8 | 10 | 13) => Plain,
            (Function, 7) => M(Node),
            (Function, 9) => M(OperatorSetId),
            (Function, 11) => M(Attribute),
            (Function, 12) => M(ValueInfo),
            (Function, 14) => M(StringStringEntry),

            (TrainingInfo, 1 | 2) => M(Graph),
            (TrainingInfo, 3 | 4) => M(StringStringEntry),

            (ValueInfo, 1 | 3) => Plain,
            (ValueInfo, 2) => M(Type),
            (ValueInfo, 4) => M(StringStringEntry),

            (Type, 6) => Plain,
            (Type, 1) => M(TypeTensor),
            (Type, 4) => M(TypeSequence),
            (Type, 5) => M(TypeMap),
            (Type, 7) => M(TypeOpaque),
            (Type, 8) => M(TypeTensor), // SparseTensor has the Tensor type's fields.
            (Type, 9) => M(TypeOptional),
            (TypeTensor, 1) => Plain,
            (TypeTensor, 2) => M(TensorShape),
            (TypeSequence | TypeOptional, 1) => M(Type),
            (TypeMap, 1) => Plain,
            (TypeMap, 2) => M(Type),
            (TypeOpaque, 1 | 2) => Plain,
            (TensorShape, 1) => M(Dimension),
            (Dimension, 1..=3) => Plain,

            (StringStringEntry | OperatorSetId, 1 | 2) => Plain,
            (TensorAnnotation, 1) => Plain,
            (TensorAnnotation, 2) => M(StringStringEntry),
            (DeviceConfiguration, 1..=3) => Plain,
            (NodeDeviceConfiguration, 1 | 3) => Plain,
            (NodeDeviceConfiguration, 2) => M(ShardingSpec),
            (ShardingSpec, 1 | 2) => Plain,
            (ShardingSpec, 3) => M(IntIntListEntry),
            (ShardingSpec, 4) => M(ShardedDim),
            (ShardedDim, 1) => Plain,
            (ShardedDim, 2) => M(SimpleShardedDim),
            (SimpleShardedDim, 1..=3) => Plain,
            (IntIntListEntry, 1 | 2) => Plain,
            _ => Unknown,
        }
    }
}

/// `TensorProto.name`, `TensorProto.external_data` and `TensorProto.data_location`.
const TENSOR_NAME: u64 = 8;
const TENSOR_EXTERNAL_DATA: u64 = 13;
const TENSOR_DATA_LOCATION: u64 = 14;

fn walk(mut bytes: &[u8], message: Message, depth: usize) -> Result<(), ModelCheckError> {
    if depth > MAX_DEPTH {
        return Err(ModelCheckError::Malformed(format!(
            "messages nested deeper than {MAX_DEPTH}"
        )));
    }
    let is_tensor = message == Message::Tensor;
    let mut tensor_name: &[u8] = b"";
    let mut external = false;
    while !bytes.is_empty() {
        let key = varint(&mut bytes)?;
        let number = key >> 3;
        let field = message.field(number);
        match key & 7 {
            0 => {
                let value = varint(&mut bytes)?;
                // Anything but DEFAULT (0) is treated as external, including values a newer
                // schema may add.
                if is_tensor && number == TENSOR_DATA_LOCATION && value != 0 {
                    external = true;
                }
            }
            1 => skip(&mut bytes, 8)?,
            5 => skip(&mut bytes, 4)?,
            2 => {
                let len = usize::try_from(varint(&mut bytes)?)
                    .map_err(|_| ModelCheckError::Malformed("field length overflows".into()))?;
                let payload = take(&mut bytes, len)?;
                if is_tensor && number == TENSOR_NAME {
                    tensor_name = payload;
                }
                if is_tensor && number == TENSOR_DATA_LOCATION {
                    return Err(ModelCheckError::Malformed(
                        "a tensor's data_location is not a plain number".into(),
                    ));
                }
                if is_tensor && number == TENSOR_EXTERNAL_DATA {
                    external = true;
                }
                match field {
                    Field::Plain => {}
                    Field::Message(child) => walk(payload, child, depth + 1)?,
                    Field::Unknown => {
                        return Err(ModelCheckError::Malformed(format!(
                            "field {number} of {message:?}Proto is not in the ONNX schema Corral \
                             checks (onnx 1.23, IR version 14)"
                        )));
                    }
                }
            }
            wire => {
                return Err(ModelCheckError::Malformed(format!(
                    "unsupported protobuf wire type {wire}"
                )));
            }
        }
    }
    if external {
        let shown = &tensor_name[..tensor_name.len().min(MAX_NAME)];
        return Err(ModelCheckError::ExternalData(
            String::from_utf8_lossy(shown).into_owned(),
        ));
    }
    Ok(())
}

fn varint(bytes: &mut &[u8]) -> Result<u64, ModelCheckError> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = bytes
            .split_first()
            .ok_or_else(|| ModelCheckError::Malformed("truncated varint".into()))?;
        *bytes = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(ModelCheckError::Malformed(
        "varint longer than 10 bytes".into(),
    ))
}

fn take<'a>(bytes: &mut &'a [u8], len: usize) -> Result<&'a [u8], ModelCheckError> {
    if bytes.len() < len {
        return Err(ModelCheckError::Malformed("truncated field".into()));
    }
    let (field, rest) = bytes.split_at(len);
    *bytes = rest;
    Ok(field)
}

fn skip(bytes: &mut &[u8], len: usize) -> Result<(), ModelCheckError> {
    take(bytes, len).map(drop)
}

#[cfg(test)]
mod tests;
