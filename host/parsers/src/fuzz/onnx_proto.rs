//! An independent decoder for the fuzz target of the self-contained check: the parts of the
//! ONNX schema (onnx 1.23) that can hold a tensor, decoded by prost instead of the check's own
//! wire-format walk. Fields not listed are skipped, as any protobuf decoder does.

use prost::Message;

#[derive(Clone, PartialEq, Message)]
pub struct ModelProto {
    #[prost(message, optional, tag = "7")]
    pub graph: Option<GraphProto>,
    #[prost(message, repeated, tag = "20")]
    pub training_info: Vec<TrainingInfoProto>,
    #[prost(message, repeated, tag = "25")]
    pub functions: Vec<FunctionProto>,
}

#[derive(Clone, PartialEq, Message)]
pub struct GraphProto {
    #[prost(message, repeated, tag = "1")]
    pub node: Vec<NodeProto>,
    #[prost(message, repeated, tag = "5")]
    pub initializer: Vec<TensorProto>,
    #[prost(message, repeated, tag = "15")]
    pub sparse_initializer: Vec<SparseTensorProto>,
}

#[derive(Clone, PartialEq, Message)]
pub struct NodeProto {
    #[prost(message, repeated, tag = "5")]
    pub attribute: Vec<AttributeProto>,
}

#[derive(Clone, PartialEq, Message)]
pub struct AttributeProto {
    #[prost(message, optional, tag = "5")]
    pub t: Option<TensorProto>,
    #[prost(message, optional, tag = "6")]
    pub g: Option<GraphProto>,
    #[prost(message, optional, tag = "22")]
    pub sparse_tensor: Option<SparseTensorProto>,
    #[prost(message, repeated, tag = "10")]
    pub tensors: Vec<TensorProto>,
    #[prost(message, repeated, tag = "11")]
    pub graphs: Vec<GraphProto>,
    #[prost(message, repeated, tag = "23")]
    pub sparse_tensors: Vec<SparseTensorProto>,
}

#[derive(Clone, PartialEq, Message)]
pub struct SparseTensorProto {
    #[prost(message, optional, tag = "1")]
    pub values: Option<TensorProto>,
    #[prost(message, optional, tag = "2")]
    pub indices: Option<TensorProto>,
}

#[derive(Clone, PartialEq, Message)]
pub struct TensorProto {
    #[prost(bytes = "vec", tag = "8")]
    pub name: Vec<u8>,
    #[prost(message, repeated, tag = "13")]
    pub external_data: Vec<StringStringEntryProto>,
    #[prost(int32, tag = "14")]
    pub data_location: i32,
}

#[derive(Clone, PartialEq, Message)]
pub struct StringStringEntryProto {
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
}

#[derive(Clone, PartialEq, Message)]
pub struct TrainingInfoProto {
    #[prost(message, optional, tag = "1")]
    pub initialization: Option<GraphProto>,
    #[prost(message, optional, tag = "2")]
    pub algorithm: Option<GraphProto>,
}

#[derive(Clone, PartialEq, Message)]
pub struct FunctionProto {
    #[prost(message, repeated, tag = "7")]
    pub node: Vec<NodeProto>,
    #[prost(message, repeated, tag = "11")]
    pub attribute_proto: Vec<AttributeProto>,
}

/// The name of the first tensor, anywhere in the model, that points outside the file.
pub fn external_tensor(model: &ModelProto) -> Option<String> {
    let mut tensors = Vec::new();
    if let Some(graph) = &model.graph {
        graph_tensors(graph, &mut tensors);
    }
    for info in &model.training_info {
        for graph in [&info.initialization, &info.algorithm]
            .into_iter()
            .flatten()
        {
            graph_tensors(graph, &mut tensors);
        }
    }
    for function in &model.functions {
        for node in &function.node {
            for attribute in &node.attribute {
                attribute_tensors(attribute, &mut tensors);
            }
        }
        for attribute in &function.attribute_proto {
            attribute_tensors(attribute, &mut tensors);
        }
    }
    tensors
        .into_iter()
        .find(|t| t.data_location != 0 || !t.external_data.is_empty())
        .map(|t| String::from_utf8_lossy(&t.name).into_owned())
}

fn graph_tensors<'m>(graph: &'m GraphProto, out: &mut Vec<&'m TensorProto>) {
    out.extend(&graph.initializer);
    for sparse in &graph.sparse_initializer {
        sparse_tensors(sparse, out);
    }
    for node in &graph.node {
        for attribute in &node.attribute {
            attribute_tensors(attribute, out);
        }
    }
}

fn attribute_tensors<'m>(attribute: &'m AttributeProto, out: &mut Vec<&'m TensorProto>) {
    out.extend(&attribute.t);
    out.extend(&attribute.tensors);
    for sparse in attribute
        .sparse_tensor
        .iter()
        .chain(&attribute.sparse_tensors)
    {
        sparse_tensors(sparse, out);
    }
    for graph in attribute.g.iter().chain(&attribute.graphs) {
        graph_tensors(graph, out);
    }
}

fn sparse_tensors<'m>(sparse: &'m SparseTensorProto, out: &mut Vec<&'m TensorProto>) {
    out.extend(&sparse.values);
    out.extend(&sparse.indices);
}
