//! Just enough of the ONNX file format to take a model's float weights out of it:
//! the graph's nodes (name, operator, inputs, and the graphs nested in their
//! attributes, as the merged decoder's `If` has) and its float32 initializers.
//!
//! hearken runs Moonshine's decoder itself (batched across conversations, see
//! `models::moonshine::batched`), with the weights of the very ONNX file ONNX
//! Runtime would load. An ONNX file is one protobuf message; this walks its wire
//! format directly (varints and length-delimited fields) rather than pulling in a
//! protobuf compiler for the few fields it needs. Unknown fields are skipped, as
//! protobuf requires.

use std::collections::HashMap;

/// Field numbers of onnx.proto3 that this reader uses.
mod field {
    pub const MODEL_GRAPH: u64 = 7;
    pub const GRAPH_NODE: u64 = 1;
    pub const GRAPH_INITIALIZER: u64 = 5;
    pub const NODE_INPUT: u64 = 1;
    pub const NODE_NAME: u64 = 3;
    pub const NODE_OP_TYPE: u64 = 4;
    pub const NODE_ATTRIBUTE: u64 = 5;
    pub const ATTRIBUTE_NAME: u64 = 1;
    pub const ATTRIBUTE_GRAPH: u64 = 6;
    pub const TENSOR_DIMS: u64 = 1;
    pub const TENSOR_DATA_TYPE: u64 = 2;
    pub const TENSOR_FLOAT_DATA: u64 = 4;
    pub const TENSOR_NAME: u64 = 8;
    pub const TENSOR_RAW_DATA: u64 = 9;
    pub const TENSOR_DATA_LOCATION: u64 = 14;
}

/// `TensorProto.DataType.FLOAT`.
const FLOAT: u64 = 1;
/// `TensorProto.DataLocation.EXTERNAL`: data in another file, which this reader
/// does not follow.
const EXTERNAL: u64 = 1;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a readable ONNX model: {0}")]
pub struct OnnxError(String);

fn malformed(what: &str) -> OnnxError {
    OnnxError(what.to_string())
}

/// A float32 initializer.
#[derive(Debug, Clone, PartialEq)]
pub struct FloatTensor {
    pub dims: Vec<usize>,
    pub data: Vec<f32>,
}

/// One node, with the graphs held by its attributes (by attribute name).
#[derive(Debug, Clone, Default)]
pub struct Node {
    pub name: String,
    pub op_type: String,
    pub inputs: Vec<String>,
    pub subgraphs: Vec<(String, Graph)>,
}

#[derive(Debug, Clone, Default)]
pub struct Graph {
    pub nodes: Vec<Node>,
    /// Float32 initializers by name (others are left out).
    pub initializers: HashMap<String, FloatTensor>,
}

impl Graph {
    /// Every node of this graph and of the graphs nested in it, depth first.
    pub fn all_nodes(&self) -> Vec<&Node> {
        let mut all = Vec::new();
        for node in &self.nodes {
            all.push(node);
            for (_, graph) in &node.subgraphs {
                all.extend(graph.all_nodes());
            }
        }
        all
    }
}

/// Reads the graph of a serialised `ModelProto`.
pub fn read_model(bytes: &[u8]) -> Result<Graph, OnnxError> {
    let mut graph = None;
    for field in Fields::new(bytes) {
        if let (field::MODEL_GRAPH, Value::Bytes(body)) = field? {
            graph = Some(read_graph(body)?);
        }
    }
    graph.ok_or_else(|| malformed("the model has no graph"))
}

fn read_graph(bytes: &[u8]) -> Result<Graph, OnnxError> {
    let mut graph = Graph::default();
    for field in Fields::new(bytes) {
        match field? {
            (field::GRAPH_NODE, Value::Bytes(body)) => graph.nodes.push(read_node(body)?),
            (field::GRAPH_INITIALIZER, Value::Bytes(body)) => {
                if let Some((name, tensor)) = read_float_tensor(body)? {
                    graph.initializers.insert(name, tensor);
                }
            }
            _ => {}
        }
    }
    Ok(graph)
}

fn read_node(bytes: &[u8]) -> Result<Node, OnnxError> {
    let mut node = Node::default();
    for field in Fields::new(bytes) {
        match field? {
            (field::NODE_INPUT, Value::Bytes(s)) => node.inputs.push(text(s)?),
            (field::NODE_NAME, Value::Bytes(s)) => node.name = text(s)?,
            (field::NODE_OP_TYPE, Value::Bytes(s)) => node.op_type = text(s)?,
            (field::NODE_ATTRIBUTE, Value::Bytes(body)) => {
                let mut name = String::new();
                let mut graph = None;
                for field in Fields::new(body) {
                    match field? {
                        (field::ATTRIBUTE_NAME, Value::Bytes(s)) => name = text(s)?,
                        (field::ATTRIBUTE_GRAPH, Value::Bytes(g)) => graph = Some(read_graph(g)?),
                        _ => {}
                    }
                }
                if let Some(graph) = graph {
                    node.subgraphs.push((name, graph));
                }
            }
            _ => {}
        }
    }
    Ok(node)
}

/// A float32 tensor's name and values; `None` for other types.
fn read_float_tensor(bytes: &[u8]) -> Result<Option<(String, FloatTensor)>, OnnxError> {
    let (mut name, mut dims, mut data_type) = (String::new(), Vec::new(), 0);
    let (mut raw, mut floats, mut external) = (None, Vec::new(), false);
    for field in Fields::new(bytes) {
        match field? {
            (field::TENSOR_DIMS, Value::Varint(d)) => dims.push(d as usize),
            (field::TENSOR_DIMS, Value::Bytes(packed)) => {
                let mut rest = packed;
                while !rest.is_empty() {
                    dims.push(varint(&mut rest)? as usize);
                }
            }
            (field::TENSOR_DATA_TYPE, Value::Varint(t)) => data_type = t,
            (field::TENSOR_FLOAT_DATA, Value::Bytes(packed)) => floats.extend(le_floats(packed)?),
            (field::TENSOR_FLOAT_DATA, Value::Fixed32(bits)) => floats.push(f32::from_bits(bits)),
            (field::TENSOR_NAME, Value::Bytes(s)) => name = text(s)?,
            (field::TENSOR_RAW_DATA, Value::Bytes(bytes)) => raw = Some(bytes),
            (field::TENSOR_DATA_LOCATION, Value::Varint(l)) => external = l == EXTERNAL,
            _ => {}
        }
    }
    if data_type != FLOAT {
        return Ok(None);
    }
    if external {
        return Err(OnnxError(format!("{name}: external data is not supported")));
    }
    let data = match raw {
        Some(bytes) => le_floats(bytes)?,
        None => floats,
    };
    let count: usize = dims.iter().product();
    if data.len() != count {
        return Err(OnnxError(format!(
            "{name}: {} values for dims {dims:?}",
            data.len()
        )));
    }
    Ok(Some((name, FloatTensor { dims, data })))
}

fn le_floats(bytes: &[u8]) -> Result<Vec<f32>, OnnxError> {
    if !bytes.len().is_multiple_of(4) {
        return Err(malformed("float data is not a whole number of floats"));
    }
    Ok(bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

fn text(bytes: &[u8]) -> Result<String, OnnxError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| malformed("a string is not UTF-8"))
}

/// A field's value by wire type.
enum Value<'a> {
    Varint(u64),
    Fixed64,
    Bytes(&'a [u8]),
    Fixed32(u32),
}

/// The fields of one message, in order.
struct Fields<'a> {
    rest: &'a [u8],
    failed: bool,
}

impl<'a> Fields<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Fields {
            rest: bytes,
            failed: false,
        }
    }

    fn next_field(&mut self) -> Result<(u64, Value<'a>), OnnxError> {
        let key = varint(&mut self.rest)?;
        let value = match key & 7 {
            0 => Value::Varint(varint(&mut self.rest)?),
            1 => {
                take(&mut self.rest, 8)?;
                Value::Fixed64
            }
            2 => {
                let len = usize::try_from(varint(&mut self.rest)?)
                    .map_err(|_| malformed("a length does not fit in memory"))?;
                Value::Bytes(take(&mut self.rest, len)?)
            }
            5 => {
                let b = take(&mut self.rest, 4)?;
                Value::Fixed32(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            }
            other => return Err(OnnxError(format!("unsupported wire type {other}"))),
        };
        Ok((key >> 3, value))
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<(u64, Value<'a>), OnnxError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() || self.failed {
            return None;
        }
        let field = self.next_field();
        self.failed = field.is_err();
        Some(field)
    }
}

fn take<'a>(rest: &mut &'a [u8], len: usize) -> Result<&'a [u8], OnnxError> {
    if rest.len() < len {
        return Err(malformed("a field runs past the end of its message"));
    }
    let (head, tail) = rest.split_at(len);
    *rest = tail;
    Ok(head)
}

fn varint(rest: &mut &[u8]) -> Result<u64, OnnxError> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, tail) = rest
            .split_first()
            .ok_or_else(|| malformed("a varint runs past the end"))?;
        *rest = tail;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(malformed("a varint is longer than 10 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode_varint(mut v: u64, out: &mut Vec<u8>) {
        loop {
            let byte = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }

    fn bytes_field(number: u64, body: &[u8], out: &mut Vec<u8>) {
        encode_varint(number << 3 | 2, out);
        encode_varint(body.len() as u64, out);
        out.extend_from_slice(body);
    }

    fn varint_field(number: u64, value: u64, out: &mut Vec<u8>) {
        encode_varint(number << 3, out);
        encode_varint(value, out);
    }

    fn tensor(name: &str, dims: &[u64], values: &[f32]) -> Vec<u8> {
        let mut t = Vec::new();
        for &d in dims {
            varint_field(field::TENSOR_DIMS, d, &mut t);
        }
        varint_field(field::TENSOR_DATA_TYPE, FLOAT, &mut t);
        bytes_field(field::TENSOR_NAME, name.as_bytes(), &mut t);
        let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        bytes_field(field::TENSOR_RAW_DATA, &raw, &mut t);
        t
    }

    #[test]
    fn reads_nodes_subgraphs_and_float_initializers() {
        let mut inner = Vec::new();
        let mut matmul = Vec::new();
        bytes_field(field::NODE_INPUT, b"x", &mut matmul);
        bytes_field(field::NODE_INPUT, b"w", &mut matmul);
        bytes_field(field::NODE_NAME, b"/layer/MatMul", &mut matmul);
        bytes_field(field::NODE_OP_TYPE, b"MatMul", &mut matmul);
        bytes_field(field::GRAPH_NODE, &matmul, &mut inner);

        let mut attribute = Vec::new();
        bytes_field(field::ATTRIBUTE_NAME, b"then_branch", &mut attribute);
        bytes_field(field::ATTRIBUTE_GRAPH, &inner, &mut attribute);
        let mut if_node = Vec::new();
        bytes_field(field::NODE_OP_TYPE, b"If", &mut if_node);
        bytes_field(field::NODE_ATTRIBUTE, &attribute, &mut if_node);

        let mut graph = Vec::new();
        bytes_field(field::GRAPH_NODE, &if_node, &mut graph);
        let w = tensor("w", &[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, -6.5]);
        bytes_field(field::GRAPH_INITIALIZER, &w, &mut graph);
        let mut model = Vec::new();
        varint_field(1, 8, &mut model); // ir_version, skipped
        bytes_field(field::MODEL_GRAPH, &graph, &mut model);

        let graph = read_model(&model).unwrap();
        let nodes = graph.all_nodes();
        assert_eq!(nodes.len(), 2);
        assert_eq!(nodes[1].name, "/layer/MatMul");
        assert_eq!(nodes[1].inputs, vec!["x", "w"]);
        assert_eq!(graph.nodes[0].subgraphs[0].0, "then_branch");
        let w = &graph.initializers["w"];
        assert_eq!(w.dims, vec![2, 3]);
        assert_eq!(w.data, vec![1.0, 2.0, 3.0, 4.0, 5.0, -6.5]);
    }

    #[test]
    fn truncated_input_is_an_error_not_a_panic() {
        let mut graph = Vec::new();
        let w = tensor("w", &[4], &[1.0, 2.0, 3.0, 4.0]);
        bytes_field(field::GRAPH_INITIALIZER, &w, &mut graph);
        let mut model = Vec::new();
        bytes_field(field::MODEL_GRAPH, &graph, &mut model);
        for cut in 0..model.len() {
            let _ = read_model(&model[..cut]);
        }
        assert!(read_model(&model[..model.len() - 3]).is_err());
    }

    #[test]
    fn a_count_that_does_not_match_the_dims_is_refused() {
        let mut graph = Vec::new();
        let w = tensor("w", &[3], &[1.0, 2.0]);
        bytes_field(field::GRAPH_INITIALIZER, &w, &mut graph);
        let mut model = Vec::new();
        bytes_field(field::MODEL_GRAPH, &graph, &mut model);
        assert!(read_model(&model).is_err());
    }
}
