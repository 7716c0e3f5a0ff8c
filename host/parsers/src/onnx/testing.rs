//! Hand-encoded ONNX protobuf for tests (unit and whole-system) and fuzzing: enough of the wire
//! format to build the models a hostile tenant would upload, without Python. Not used when
//! serving.

/// A length-delimited field (wire type 2).
pub fn field(number: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    put_varint(&mut out, number << 3 | 2);
    put_varint(&mut out, payload.len() as u64);
    out.extend_from_slice(payload);
    out
}

/// A varint field (wire type 0).
pub fn number(number: u64, value: u64) -> Vec<u8> {
    let mut out = Vec::new();
    put_varint(&mut out, number << 3);
    put_varint(&mut out, value);
    out
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push(value as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// `TensorProto { name, dims: [len], data_type: UINT8, external_data: {location}, data_location:
/// EXTERNAL }`.
pub fn external_tensor(name: &str, location: &str, len: u64) -> Vec<u8> {
    let entry = [field(1, b"location"), field(2, location.as_bytes())].concat();
    [
        number(1, len),
        number(2, 2),
        field(8, name.as_bytes()),
        field(13, &entry),
        number(14, 1),
    ]
    .concat()
}

/// The model from the security issue: a local function `Leak` whose default attribute `w` is a
/// uint8 tensor of `len` bytes read from the file `location`, and whose body is `Constant(value
/// = ref_attr_name "w")`; the graph calls it and returns its output `y`. ONNX Runtime inlines
/// the function, and so reads the file, unless something stops it.
pub fn function_default_attribute_model(location: &str, len: u64) -> Vec<u8> {
    let default = [
        field(1, b"w"),
        number(20, 4), // AttributeProto.TENSOR
        field(5, &external_tensor("w", location, len)),
    ]
    .concat();
    let reference = [field(1, b"value"), number(20, 4), field(21, b"w")].concat();
    let constant = [
        field(2, b"out"),
        field(4, b"Constant"),
        field(5, &reference),
    ]
    .concat();
    let opset = |domain: &[u8], version| [field(1, domain), number(2, version)].concat();
    let function = [
        field(1, b"Leak"),
        field(5, b"out"),
        field(7, &constant),
        field(9, &opset(b"", 17)),
        field(10, b"local"),
        field(11, &default),
    ]
    .concat();
    let call = [field(2, b"y"), field(4, b"Leak"), field(7, b"local")].concat();
    let uint8 = field(1, &number(1, 2)); // TypeProto { tensor_type { elem_type: UINT8 } }
    let output = [field(1, b"y"), field(2, &uint8)].concat();
    let graph = [field(1, &call), field(2, b"g"), field(12, &output)].concat();
    [
        number(1, 10),
        field(7, &graph),
        field(8, &opset(b"", 17)),
        field(8, &opset(b"local", 1)),
        field(25, &function),
    ]
    .concat()
}
