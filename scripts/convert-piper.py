#!/usr/bin/env python3
"""Rewrite a Piper voice's decoder so ONNX Runtime runs it in its blocked kernels.

    convert-piper.py IN.onnx OUT.onnx [IN.onnx OUT.onnx ...]

Piper (VITS) spends ~90 % of its time in the HiFi-GAN decoder (`/dec/...`): twenty
1-D convolutions and three transposed ones over the audio. ONNX Runtime runs a 1-D
`Conv` as im2col and a matrix product; a 2-D `Conv` it lays out in blocks of channels
(NCHWc) and runs in its direct convolution kernels. This script gives every tensor of
the decoder a height of one: an `Unsqueeze` where the decoder's input comes in, each
`Conv`/`ConvTranspose` weight `[out, in, k]` as `[out, in, 1, k]` with its kernel,
strides, dilations and pads widened to match, and a `Squeeze` where its output leaves.
The arithmetic is the same convolution; synthesis is ~9 % faster (docs/benchmarks.md)
and its samples differ from the original's by rounding only (`tests/models_piper.rs`).

Only the decoder changes; the elementwise ops between its convolutions (`Add`,
`LeakyRelu`, `Div` by a scalar, `Tanh`) work on any rank, and any other op or a
non-scalar constant there stops the script. The output is deterministic: the same
input and the same `onnx` version give the same bytes. Requires `numpy`, `onnx`.
"""

import sys

import numpy as np
import onnx
from onnx import helper, numpy_helper

DECODER = "/dec/"
# Ops allowed between the decoder's convolutions: rank-agnostic, given scalar constants.
ELEMENTWISE = {"Add", "LeakyRelu", "Div", "Mul", "Tanh", "Constant"}
AXIS = "convert_piper_height_axis"


def as_2d(node, weight):
    """The 2-D form of a 1-D `Conv`/`ConvTranspose` node, reading `weight`."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    pads = attrs.get("pads", [0, 0])
    new = dict(
        kernel_shape=[1, weight.shape[2]],
        dilations=[1, attrs.get("dilations", [1])[0]],
        strides=[1, attrs.get("strides", [1])[0]],
        pads=[0, pads[0], 0, pads[1]],
        group=attrs.get("group", 1),
    )
    if "output_padding" in attrs:
        new["output_padding"] = [0, attrs["output_padding"][0]]
    known = {"kernel_shape", "dilations", "strides", "pads", "group", "output_padding", "auto_pad"}
    unknown = set(attrs) - known
    if unknown or attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        sys.exit(f"{node.name}: attributes this script does not handle: {sorted(unknown) or 'auto_pad'}")
    return new


def scalar_constant(node):
    """Whether a `Constant` holds one tensor `value` of a single element."""
    values = [a for a in node.attribute if a.name == "value"]
    return len(values) == 1 and numpy_helper.to_array(values[0].t).size == 1


def convert(src, out):
    model = onnx.load(src)
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    decoder = [n for n in graph.node if n.name.startswith(DECODER)]
    if not decoder:
        sys.exit(f"{src}: no {DECODER} nodes; not a Piper VITS export this script knows")
    produced = {o for n in decoder for o in n.output}
    inputs = {i for n in decoder for i in n.input if i and i not in produced and i not in inits}
    outside = [n for n in graph.node if not n.name.startswith(DECODER)]
    outputs = {i for n in outside for i in n.input if i in produced}
    outputs |= {o.name for o in graph.output if o.name in produced}
    if len(inputs) != 1 or len(outputs) != 1:
        sys.exit(f"{src}: decoder inputs {sorted(inputs)}, outputs {sorted(outputs)}; expected one each")
    (entry,), (exit_,) = inputs, outputs
    renamed = {entry: entry + "_h1", exit_: exit_ + "_h1"}

    nodes, convs = [], 0
    for node in graph.node:
        if not node.name.startswith(DECODER):
            nodes.append(node)
            if entry in node.output:
                nodes.append(helper.make_node("Unsqueeze", [entry, AXIS], [renamed[entry]],
                                              name="/convert_piper/Unsqueeze"))
            continue
        ins = [renamed.get(i, i) for i in node.input]
        outs = [renamed.get(o, o) for o in node.output]
        if node.op_type in ("Conv", "ConvTranspose"):
            weight = numpy_helper.to_array(inits[node.input[1]])
            if weight.ndim != 3:
                sys.exit(f"{node.name}: weight of rank {weight.ndim}, expected 3")
            widened = numpy_helper.from_array(weight[:, :, None, :], node.input[1] + "_h1")
            graph.initializer.append(widened)
            ins[1] = widened.name
            node = helper.make_node(node.op_type, ins, outs, name=node.name, **as_2d(node, weight))
            convs += 1
        elif node.op_type in ELEMENTWISE:
            if node.op_type == "Constant" and not scalar_constant(node):
                sys.exit(f"{node.name}: a constant that is not a scalar")
            del node.input[:]
            node.input.extend(ins)
            del node.output[:]
            node.output.extend(outs)
        else:
            sys.exit(f"{node.name}: {node.op_type} is not an op this script widens")
        nodes.append(node)
        if renamed[exit_] in node.output:
            nodes.append(helper.make_node("Squeeze", [renamed[exit_], AXIS], [exit_],
                                          name="/convert_piper/Squeeze"))
    graph.initializer.append(numpy_helper.from_array(np.array([2], dtype=np.int64), AXIS))
    del graph.node[:]
    graph.node.extend(nodes)
    used = {i for n in graph.node for i in n.input}
    kept = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    # Shapes inferred for the old ranks would now be wrong.
    del graph.value_info[:]
    onnx.checker.check_model(model)
    onnx.save(model, out)
    print(f"converted {src} -> {out} ({convs} convolutions)")


def main():
    args = sys.argv[1:]
    if not args or len(args) % 2:
        sys.exit(__doc__)
    for src, out in zip(args[::2], args[1::2]):
        convert(src, out)


if __name__ == "__main__":
    main()
