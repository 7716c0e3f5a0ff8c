//! Tensors between the protocol's JSON (`datatype`, `shape`, row-major `data`) and `wasi:nn`.

use corral_guest::Tensor;
use corral_guest::wasi_nn::tensor::TensorType;
use half::{bf16, f16};
use serde_json::{Value, json};

use crate::Data;

/// The protocol's name of a `wasi:nn` element type.
pub fn datatype_name(ty: TensorType) -> &'static str {
    match ty {
        TensorType::Fp16 => "FP16",
        TensorType::Bf16 => "BF16",
        TensorType::Fp32 => "FP32",
        TensorType::Fp64 => "FP64",
        TensorType::U8 => "UINT8",
        TensorType::I32 => "INT32",
        TensorType::I64 => "INT64",
    }
}

fn datatype(name: &str) -> Option<TensorType> {
    Some(match name {
        "FP16" => TensorType::Fp16,
        "BF16" => TensorType::Bf16,
        "FP32" => TensorType::Fp32,
        "FP64" => TensorType::Fp64,
        "UINT8" => TensorType::U8,
        "INT32" => TensorType::I32,
        "INT64" => TensorType::I64,
        _ => return None,
    })
}

/// `data`'s numbers in row-major order, flat or nested arrays alike (a single number is a
/// one-element tensor).
fn flatten<'a>(data: &'a Value, out: &mut Vec<&'a Value>) {
    match data {
        Value::Array(items) => items.iter().for_each(|item| flatten(item, out)),
        other => out.push(other),
    }
}

/// The `wasi:nn` tensor for input `name`, or what is wrong with it.
pub fn decode(
    name: &str,
    datatype_text: &str,
    shape: &[i64],
    data: Data<'_>,
) -> Result<Tensor, String> {
    let ty = datatype(datatype_text).ok_or_else(|| {
        format!(
            "input '{name}': datatype '{datatype_text}' is not one Corral's models take \
             (FP16, BF16, FP32, FP64, UINT8, INT32, INT64)"
        )
    })?;
    let dims: Vec<u32> = shape
        .iter()
        .map(|&d| u32::try_from(d))
        .collect::<Result<_, _>>()
        .map_err(|_| {
            format!("input '{name}': shape {shape:?} has a dimension that is negative or too large")
        })?;
    let count = dims
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d as usize))
        .ok_or_else(|| format!("input '{name}': shape {shape:?} has too many elements"))?;
    let data = match data {
        Data::Json(data) => data,
        Data::Binary(bytes) => {
            // Raw little-endian elements, row-major: what the model takes, as they are.
            let size = element_size(ty);
            if Some(bytes.len()) != count.checked_mul(size) {
                return Err(format!(
                    "input '{name}': shape {shape:?} of {datatype_text} takes {count} × {size} \
                     bytes but binary_data_size is {}",
                    bytes.len()
                ));
            }
            return Ok(Tensor::from_bytes(&dims, ty, bytes));
        }
    };
    let mut values = Vec::new();
    flatten(data, &mut values);
    if values.len() != count {
        return Err(format!(
            "input '{name}': shape {shape:?} holds {count} elements but data has {}",
            values.len()
        ));
    }
    let bad = |i: usize| {
        format!(
            "input '{name}': element {i} ({}) is not a {datatype_text}",
            values[i]
        )
    };
    let mut bytes = Vec::with_capacity(count * 8);
    for (i, value) in values.iter().enumerate() {
        match ty {
            TensorType::Fp32 => {
                let v = value.as_f64().ok_or_else(|| bad(i))?;
                bytes.extend_from_slice(&(v as f32).to_le_bytes());
            }
            TensorType::Fp64 => {
                let v = value.as_f64().ok_or_else(|| bad(i))?;
                bytes.extend_from_slice(&v.to_le_bytes());
            }
            TensorType::Fp16 => {
                let v = value.as_f64().ok_or_else(|| bad(i))?;
                bytes.extend_from_slice(&f16::from_f64(v).to_le_bytes());
            }
            TensorType::Bf16 => {
                let v = value.as_f64().ok_or_else(|| bad(i))?;
                bytes.extend_from_slice(&bf16::from_f64(v).to_le_bytes());
            }
            TensorType::U8 => {
                let v = value
                    .as_u64()
                    .and_then(|v| u8::try_from(v).ok())
                    .ok_or_else(|| bad(i))?;
                bytes.push(v);
            }
            TensorType::I32 => {
                let v = value
                    .as_i64()
                    .and_then(|v| i32::try_from(v).ok())
                    .ok_or_else(|| bad(i))?;
                bytes.extend_from_slice(&v.to_le_bytes());
            }
            TensorType::I64 => {
                let v = value.as_i64().ok_or_else(|| bad(i))?;
                bytes.extend_from_slice(&v.to_le_bytes());
            }
        }
    }
    Ok(Tensor::from_bytes(&dims, ty, &bytes))
}

fn element_size(ty: TensorType) -> usize {
    match ty {
        TensorType::U8 => 1,
        TensorType::Fp16 | TensorType::Bf16 => 2,
        TensorType::Fp32 | TensorType::I32 => 4,
        TensorType::Fp64 | TensorType::I64 => 8,
    }
}

/// Output `name` as the protocol's JSON tensor.
pub fn encode(name: &str, tensor: &Tensor) -> Result<Value, String> {
    let ty = tensor.ty();
    let bytes = tensor.bytes();
    let data: Vec<Value> = match ty {
        TensorType::Fp32 => chunks::<4>(&bytes)
            .map(|c| json!(f32::from_le_bytes(c)))
            .collect(),
        TensorType::Fp64 => chunks::<8>(&bytes)
            .map(|c| json!(f64::from_le_bytes(c)))
            .collect(),
        TensorType::Fp16 => chunks::<2>(&bytes)
            .map(|c| json!(f16::from_le_bytes(c).to_f32()))
            .collect(),
        TensorType::Bf16 => chunks::<2>(&bytes)
            .map(|c| json!(bf16::from_le_bytes(c).to_f32()))
            .collect(),
        TensorType::U8 => bytes.iter().map(|&b| json!(b)).collect(),
        TensorType::I32 => chunks::<4>(&bytes)
            .map(|c| json!(i32::from_le_bytes(c)))
            .collect(),
        TensorType::I64 => chunks::<8>(&bytes)
            .map(|c| json!(i64::from_le_bytes(c)))
            .collect(),
    };
    let shape = tensor.shape();
    let count: usize = shape.iter().map(|&d| d as usize).product();
    if data.len() != count {
        return Err(format!(
            "output '{name}': {} elements for shape {shape:?}",
            data.len()
        ));
    }
    Ok(json!({
        "name": name,
        "datatype": datatype_name(ty),
        "shape": shape,
        "data": data,
    }))
}

/// `bytes` in fixed-size pieces (a trailing partial piece is dropped; `encode` then finds
/// the count wrong).
fn chunks<const N: usize>(bytes: &[u8]) -> impl Iterator<Item = [u8; N]> + '_ {
    bytes
        .chunks_exact(N)
        .map(|c| c.try_into().expect("a chunk of N bytes"))
}
