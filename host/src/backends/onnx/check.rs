//! Upload-time checks on an ONNX file, before ONNX Runtime sees it.
//!
//! An ONNX tensor may keep its data in another file (`data_location = EXTERNAL`), which ONNX
//! Runtime would open relative to the model's path. Uploaded models must be self-contained,
//! so any tensor that points outside the file is refused, wherever it sits: graph
//! initializers, node attributes, sub-graphs of control-flow nodes, functions.
//!
//! This walks the protobuf wire format directly: only the fields that can hold tensors are
//! followed, nesting is bounded, and malformed input is an error, never a panic.

/// Why a model file is refused.
#[derive(Debug, PartialEq, Eq)]
pub enum ModelCheckError {
    /// A tensor's data lives in another file.
    ExternalData(String),
    /// The bytes are not a well-formed ONNX protobuf.
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

/// Refuses a model whose tensors reference external data.
pub fn check_self_contained(bytes: &[u8]) -> Result<(), ModelCheckError> {
    walk(bytes, Message::Model, 0)
}

/// The ONNX messages that can (transitively) contain tensors.
#[derive(Clone, Copy)]
enum Message {
    Model,
    Graph,
    Node,
    Attribute,
    Tensor,
    SparseTensor,
    Function,
}

const MAX_DEPTH: usize = 64;
/// `TensorProto.DataLocation.EXTERNAL`.
const EXTERNAL: u64 = 1;

impl Message {
    /// The message type of field `number`, when it is one to follow.
    fn child(self, number: u64) -> Option<Message> {
        use Message::*;
        match (self, number) {
            (Model, 7) => Some(Graph),
            (Model, 25) => Some(Function),
            (Graph, 1) | (Function, 7) => Some(Node),
            (Graph, 5) => Some(Tensor),
            (Graph, 15) => Some(SparseTensor),
            (Node, 5) => Some(Attribute),
            (Attribute, 5 | 10) => Some(Tensor),
            (Attribute, 6 | 11) => Some(Graph),
            (Attribute, 22 | 23) => Some(SparseTensor),
            (SparseTensor, 1 | 2) => Some(Tensor),
            _ => None,
        }
    }
}

fn walk(mut bytes: &[u8], message: Message, depth: usize) -> Result<(), ModelCheckError> {
    if depth > MAX_DEPTH {
        return Err(ModelCheckError::Malformed(format!(
            "messages nested deeper than {MAX_DEPTH}"
        )));
    }
    let mut tensor_name = String::new();
    let mut external = false;
    while !bytes.is_empty() {
        let key = varint(&mut bytes)?;
        let number = key >> 3;
        match key & 7 {
            0 => {
                let value = varint(&mut bytes)?;
                if matches!(message, Message::Tensor) && number == 14 && value == EXTERNAL {
                    external = true;
                }
            }
            1 => skip(&mut bytes, 8)?,
            5 => skip(&mut bytes, 4)?,
            2 => {
                let len = usize::try_from(varint(&mut bytes)?)
                    .map_err(|_| ModelCheckError::Malformed("field length overflows".into()))?;
                let field = take(&mut bytes, len)?;
                match (message, number) {
                    (Message::Tensor, 8) => {
                        tensor_name = String::from_utf8_lossy(field).into_owned();
                    }
                    (Message::Tensor, 13) => external = true,
                    _ => {
                        if let Some(child) = message.child(number) {
                            walk(field, child, depth + 1)?;
                        }
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
        return Err(ModelCheckError::ExternalData(tensor_name));
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
mod tests {
    use super::*;

    fn field(number: u64, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![(number << 3 | 2) as u8, payload.len() as u8];
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn the_shipped_models_are_self_contained() {
        let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        for model in [
            "tests/fixtures/add.onnx",
            "tests/fixtures/identity_types.onnx",
            "examples/image-classifier/model/efficientnet-lite0.onnx",
        ] {
            let bytes = std::fs::read(repo.join(model)).unwrap();
            assert_eq!(check_self_contained(&bytes), Ok(()), "{model}");
        }
    }

    #[test]
    fn external_data_is_found_in_initializers_and_subgraphs() {
        // TensorProto { name: "w", data_location: EXTERNAL }
        let mut tensor = field(8, b"w");
        tensor.extend_from_slice(&[14 << 3, 1]);
        let graph = field(5, &tensor);
        let model = field(7, &graph);
        assert_eq!(
            check_self_contained(&model),
            Err(ModelCheckError::ExternalData("w".into()))
        );
        // The same tensor as an attribute of a node inside an If's sub-graph.
        let attribute = field(6, &graph);
        let node = field(5, &attribute);
        let outer = field(1, &node);
        assert!(matches!(
            check_self_contained(&field(7, &outer)),
            Err(ModelCheckError::ExternalData(_))
        ));
    }

    #[test]
    fn truncated_or_garbage_bytes_are_malformed_not_a_panic() {
        for bytes in [&[0x3a, 0x7f, 1][..], &[0xff; 12], &[0x0b]] {
            assert!(matches!(
                check_self_contained(bytes),
                Err(ModelCheckError::Malformed(_))
            ));
        }
    }
}
