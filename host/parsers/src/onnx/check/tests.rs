//! The self-contained check against hand-encoded models: each place a tensor can sit in the
//! ONNX schema, with its data inline (accepted) and external (refused).

use super::*;
use crate::onnx::testing::{field, number};

fn external_tensor(name: &str) -> Vec<u8> {
    crate::onnx::testing::external_tensor(name, "corral-data/admin-token", 1)
}

/// `TensorProto { name, dims: [1], raw_data }`, self-contained.
fn inline_tensor(name: &str) -> Vec<u8> {
    [
        field(8, name.as_bytes()),
        number(1, 1),
        number(2, 2),
        field(9, &[7]),
    ]
    .concat()
}

fn model_with_graph(graph: &[u8]) -> Vec<u8> {
    [number(1, 10), field(7, graph)].concat()
}

fn refused(model: &[u8]) -> bool {
    matches!(
        check_self_contained(model),
        Err(ModelCheckError::ExternalData(_))
    )
}

#[test]
fn the_shipped_models_are_self_contained() {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    for model in [
        "tests/fixtures/add.onnx",
        "tests/fixtures/identity_types.onnx",
        "tests/fixtures/reshape.onnx",
        "tests/fixtures/bool_output.onnx",
        "examples/image-classifier/model/efficientnet-lite0.onnx",
    ] {
        let bytes = std::fs::read(repo.join(model)).unwrap();
        assert_eq!(check_self_contained(&bytes), Ok(()), "{model}");
    }
    let external = std::fs::read(repo.join("tests/fixtures/external_data.onnx")).unwrap();
    assert!(refused(&external));
}

/// Every place a tensor can sit, built around a given tensor.
fn placements(tensor: &[u8]) -> Vec<(&'static str, Vec<u8>)> {
    let attribute_t = [field(1, b"value"), number(20, 4), field(5, tensor)].concat();
    let attribute_ts = [field(1, b"values"), number(20, 9), field(10, tensor)].concat();
    let sparse = [field(1, tensor), field(2, &inline_tensor("idx"))].concat();
    let attribute_sparse = [field(1, b"s"), number(20, 11), field(22, &sparse)].concat();
    let attribute_sparses = [field(1, b"s"), number(20, 12), field(23, &sparse)].concat();
    let node = |attribute: &[u8]| [field(4, b"Constant"), field(5, attribute)].concat();
    let graph_with_node = |attribute: &[u8]| field(1, &node(attribute));
    // An If node whose then-branch holds the tensor as an initializer, three levels deep.
    let mut deep = field(5, tensor);
    for _ in 0..3 {
        let branch = [field(1, b"then_branch"), number(20, 5), field(6, &deep)].concat();
        deep = field(1, &[field(4, b"If"), field(5, &branch)].concat());
    }
    let branches = [
        field(1, b"branches"),
        number(20, 10),
        field(11, &field(5, tensor)),
    ]
    .concat();
    // A local function: a default attribute value, and a node in its body.
    let function = |inner: Vec<u8>| {
        [
            field(1, b"Leak"),
            field(10, b"local"),
            field(5, b"out"),
            inner,
        ]
        .concat()
    };
    let training = |graph_field: u64| field(graph_field, &field(5, tensor));
    vec![
        ("graph initializer", model_with_graph(&field(5, tensor))),
        ("sparse initializer", model_with_graph(&field(15, &sparse))),
        (
            "node attribute t",
            model_with_graph(&graph_with_node(&attribute_t)),
        ),
        (
            "node attribute tensors",
            model_with_graph(&graph_with_node(&attribute_ts)),
        ),
        (
            "node attribute sparse_tensor",
            model_with_graph(&graph_with_node(&attribute_sparse)),
        ),
        (
            "node attribute sparse_tensors",
            model_with_graph(&graph_with_node(&attribute_sparses)),
        ),
        ("nested sub-graph", model_with_graph(&deep)),
        (
            "attribute graphs",
            model_with_graph(&graph_with_node(&branches)),
        ),
        (
            "function default attribute",
            field(25, &function(field(11, &attribute_t))),
        ),
        (
            "function body",
            field(25, &function(field(7, &node(&attribute_t)))),
        ),
        ("training initialization", field(20, &training(1))),
        ("training algorithm", field(20, &training(2))),
    ]
}

#[test]
fn every_place_a_tensor_can_sit_is_checked() {
    for (place, model) in placements(&external_tensor("w")) {
        assert_eq!(
            check_self_contained(&model),
            Err(ModelCheckError::ExternalData("w".into())),
            "{place}"
        );
    }
    for (place, model) in placements(&inline_tensor("w")) {
        assert_eq!(check_self_contained(&model), Ok(()), "{place}");
    }
}

#[test]
fn the_function_default_attribute_model_is_refused() {
    let model = crate::onnx::testing::function_default_attribute_model("x", 1);
    assert_eq!(
        check_self_contained(&model),
        Err(ModelCheckError::ExternalData("w".into()))
    );
}

#[test]
fn any_sign_of_external_data_is_enough() {
    // data_location alone, external_data alone, and a data_location a newer schema might add.
    for tensor in [
        [field(8, b"a"), number(14, 1)].concat(),
        [field(8, b"a"), field(13, &field(1, b"location"))].concat(),
        [field(8, b"a"), number(14, 7)].concat(),
    ] {
        assert!(refused(&model_with_graph(&field(5, &tensor))));
    }
    // A data_location that is not a varint is not something to guess about.
    let odd = [field(8, b"a"), field(14, &[1])].concat();
    assert!(matches!(
        check_self_contained(&model_with_graph(&field(5, &odd))),
        Err(ModelCheckError::Malformed(_))
    ));
}

#[test]
fn unknown_messages_are_refused_and_unknown_numbers_are_not() {
    // An unknown length-delimited field could hold a tensor from a newer schema.
    let unknown = model_with_graph(&field(99, &external_tensor("w")));
    let error = check_self_contained(&unknown).unwrap_err();
    assert!(
        error.to_string().contains("field 99 of GraphProto"),
        "{error}"
    );
    let in_node = model_with_graph(&field(1, &field(42, b"x")));
    assert!(matches!(
        check_self_contained(&in_node),
        Err(ModelCheckError::Malformed(_))
    ));
    // A varint cannot: it is skipped, as protobuf parsers skip it.
    assert_eq!(
        check_self_contained(&[number(1, 10), number(77, 3)].concat()),
        Ok(())
    );
}

#[test]
fn a_refused_name_is_cut_short() {
    let long = "n".repeat(10_000);
    let Err(ModelCheckError::ExternalData(name)) =
        check_self_contained(&model_with_graph(&field(5, &external_tensor(&long))))
    else {
        panic!("the external tensor is refused");
    };
    assert_eq!(name.len(), MAX_NAME);
}

#[test]
fn truncated_deep_or_garbage_bytes_are_malformed_not_a_panic() {
    let mut deep = field(5, &inline_tensor("w"));
    for _ in 0..100 {
        let branch = [field(1, b"g"), field(6, &deep)].concat();
        deep = field(1, &field(5, &branch));
    }
    for bytes in [
        &[0x3a, 0x7f, 1][..],
        &[0xff; 12],
        &[0x0b],
        &model_with_graph(&deep),
    ] {
        assert!(
            matches!(
                check_self_contained(bytes),
                Err(ModelCheckError::Malformed(_))
            ),
            "{bytes:?}"
        );
    }
}
