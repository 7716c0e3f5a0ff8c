//! Stacking requests into one run and splitting its outputs back.
//!
//! Requests batch together only when they agree on everything but the batch axis: the same
//! input names, element types, ranks and every other dimension ([`BatchKey`]). Stacking is
//! along the leading axis, which is the only batch axis a [`Signature`] reports, so a request's
//! rows are one contiguous run of bytes in the stacked tensor and splitting is slicing.

use crate::backends::tensor::{ElementType, Tensor, TensorBytes};
use crate::backends::{InferenceError, Signature};

/// What requests must share to run as one batch: per input (sorted by name), its name, type
/// and dimensions after the leading one.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct BatchKey(Vec<(String, ElementType, Vec<u32>)>);

/// A request's batch key and its rows (its leading dimension), or `None` when it cannot join
/// a batch: the model has no batch axis (its signature's, or for a model that declares no
/// inputs, `declared_axis` from its deployment's config), an input is malformed (it runs alone,
/// so its error is its own), or the inputs disagree on their leading dimension.
pub fn batch_key(
    signature: &Signature,
    inputs: &[(String, Tensor)],
    declared_axis: Option<usize>,
) -> Option<(BatchKey, u32)> {
    let undeclared = signature.inputs.is_empty();
    let axis = if undeclared {
        declared_axis
    } else {
        signature.batch_axis
    };
    if axis != Some(0) || inputs.is_empty() {
        return None;
    }
    let mut rows = None;
    let mut key = Vec::with_capacity(inputs.len());
    for (name, tensor) in inputs {
        tensor.validate(name).ok()?;
        if undeclared {
            // Nothing to check against: the inputs only have to agree with each other, and
            // the backend's own checks judge each request if the batch fails.
            let (&lead, rest) = tensor.shape.split_first()?;
            if lead == 0 || *rows.get_or_insert(lead) != lead {
                return None;
            }
            key.push((name.clone(), tensor.ty, rest.to_vec()));
            continue;
        }
        let spec = signature.inputs.iter().find(|s| &s.name == name)?;
        let fits = spec.ty == Some(tensor.ty)
            && spec.shape.len() == tensor.shape.len()
            && spec
                .shape
                .iter()
                .zip(&tensor.shape)
                .all(|(want, got)| want.is_none_or(|w| w == *got));
        if !fits {
            return None;
        }
        let (&lead, rest) = tensor.shape.split_first()?;
        if lead == 0 || *rows.get_or_insert(lead) != lead {
            return None;
        }
        key.push((name.clone(), tensor.ty, rest.to_vec()));
    }
    // Every declared input must be given (a missing one is the request's own error).
    if !undeclared && signature.inputs.len() != inputs.len() {
        return None;
    }
    // TorchScript takes its inputs in the guest's order: the order is part of the key there.
    if !undeclared {
        key.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    }
    Some((BatchKey(key), rows?))
}

/// Stacks several requests' inputs (same [`BatchKey`]) along the leading axis: one copy of
/// each request's bytes into the batch's buffer.
pub fn stack(requests: &[Vec<(String, Tensor)>]) -> Result<Vec<(String, Tensor)>, InferenceError> {
    let first = requests
        .first()
        .ok_or_else(|| InferenceError::runtime("an empty batch"))?;
    let mut stacked = Vec::with_capacity(first.len());
    for (name, tensor) in first {
        let mut shape = tensor.shape.clone();
        let mut total_rows: u32 = 0;
        let mut len = 0usize;
        let mut parts = Vec::with_capacity(requests.len());
        for request in requests {
            let (_, part) = request
                .iter()
                .find(|(other, _)| other == name)
                .ok_or_else(|| InferenceError::runtime(format!("batch input '{name}' missing")))?;
            total_rows = total_rows
                .checked_add(part.shape[0])
                .ok_or_else(|| InferenceError::runtime("batch rows overflow"))?;
            len += part.bytes.as_slice().len();
            parts.push(part.bytes.as_slice());
        }
        shape[0] = total_rows;
        let mut bytes = Vec::with_capacity(len);
        for part in parts {
            bytes.extend_from_slice(part);
        }
        stacked.push((
            name.clone(),
            Tensor {
                shape,
                ty: tensor.ty,
                bytes: TensorBytes::Host(bytes),
            },
        ));
    }
    Ok(stacked)
}

/// Splits a batch's outputs back into one set per request, `rows[i]` rows each. Fails when an
/// output's leading dimension is not the batch's rows (the model does not keep its batch axis
/// through to that output, so it cannot be batched).
pub fn split(
    outputs: Vec<(String, Tensor)>,
    rows: &[u32],
) -> Result<Vec<Vec<(String, Tensor)>>, InferenceError> {
    let total: u64 = rows.iter().map(|&r| u64::from(r)).sum();
    let mut per_request: Vec<Vec<(String, Tensor)>> = rows
        .iter()
        .map(|_| Vec::with_capacity(outputs.len()))
        .collect();
    for (name, tensor) in outputs {
        let lead = tensor.shape.first().copied().map(u64::from);
        if lead != Some(total) {
            return Err(InferenceError::runtime(format!(
                "output '{name}' has dimensions {:?}: its leading dimension is not the batch's \
                 {total} rows",
                tensor.shape
            )));
        }
        let bytes = tensor.bytes.as_slice();
        let row_bytes = usize::try_from(bytes.len() as u64 / total.max(1))
            .map_err(|_| InferenceError::runtime("output row size overflows"))?;
        let mut at = 0usize;
        for (request, &r) in per_request.iter_mut().zip(rows) {
            let len = row_bytes * r as usize;
            let mut shape = tensor.shape.clone();
            shape[0] = r;
            request.push((
                name.clone(),
                Tensor {
                    shape,
                    ty: tensor.ty,
                    bytes: TensorBytes::Host(bytes[at..at + len].to_vec()),
                },
            ));
            at += len;
        }
    }
    Ok(per_request)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backends::TensorSpec;

    fn tensor(shape: &[u32], fill: u8) -> Tensor {
        let len = shape.iter().product::<u32>() as usize * 4;
        Tensor {
            shape: shape.to_vec(),
            ty: ElementType::F32,
            bytes: TensorBytes::Host(vec![fill; len]),
        }
    }

    fn signature() -> Signature {
        let spec = |name: &str| TensorSpec {
            name: name.into(),
            ty: Some(ElementType::F32),
            shape: vec![None, Some(3)],
        };
        Signature {
            inputs: vec![spec("x")],
            outputs: vec![spec("y")],
            batch_axis: Some(0),
        }
    }

    #[test]
    fn requests_batch_only_when_all_but_the_leading_axis_agree() {
        let sig = signature();
        let (a, rows_a) = batch_key(&sig, &[("x".into(), tensor(&[1, 3], 0))], None).unwrap();
        let (b, rows_b) = batch_key(&sig, &[("x".into(), tensor(&[4, 3], 0))], None).unwrap();
        assert_eq!(a, b);
        assert_eq!((rows_a, rows_b), (1, 4));
        // Wrong trailing dimension, wrong name, malformed data, no batch axis: run alone.
        assert!(batch_key(&sig, &[("x".into(), tensor(&[1, 4], 0))], None).is_none());
        assert!(batch_key(&sig, &[("z".into(), tensor(&[1, 3], 0))], None).is_none());
        let mut short = tensor(&[1, 3], 0);
        short.bytes = TensorBytes::Host(vec![0; 11]);
        assert!(batch_key(&sig, &[("x".into(), short)], None).is_none());
        let fixed = Signature {
            batch_axis: None,
            ..signature()
        };
        assert!(batch_key(&fixed, &[("x".into(), tensor(&[1, 3], 0))], Some(0)).is_none());
    }

    #[test]
    fn a_model_without_declared_inputs_batches_on_the_axis_its_deployment_names() {
        let undeclared = Signature::default();
        let inputs = [("a".to_string(), tensor(&[2, 3], 0))];
        assert!(batch_key(&undeclared, &inputs, None).is_none());
        let (_, rows) = batch_key(&undeclared, &inputs, Some(0)).unwrap();
        assert_eq!(rows, 2);
        let disagree = [
            ("a".to_string(), tensor(&[2, 3], 0)),
            ("b".to_string(), tensor(&[1, 3], 0)),
        ];
        assert!(batch_key(&undeclared, &disagree, Some(0)).is_none());
    }

    #[test]
    fn split_undoes_stack() {
        let requests = vec![
            vec![("x".to_string(), tensor(&[1, 3], 1))],
            vec![("x".to_string(), tensor(&[2, 3], 2))],
        ];
        let stacked = stack(&requests).unwrap();
        assert_eq!(stacked[0].1.shape, vec![3, 3]);
        let back = split(stacked, &[1, 2]).unwrap();
        assert_eq!(back[0][0].1.shape, vec![1, 3]);
        assert_eq!(back[0][0].1.bytes.as_slice(), &[1; 12]);
        assert_eq!(back[1][0].1.shape, vec![2, 3]);
        assert_eq!(back[1][0].1.bytes.as_slice(), &[2; 24]);
    }

    #[test]
    fn an_output_without_the_batch_axis_cannot_be_split() {
        let outputs = vec![("y".to_string(), tensor(&[1, 3], 0))];
        let err = split(outputs, &[1, 2]).unwrap_err();
        assert!(err.message.contains("batch"), "{}", err.message);
    }
}
