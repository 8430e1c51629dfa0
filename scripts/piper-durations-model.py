#!/usr/bin/env python3
"""Writes a copy of the Piper voice that also outputs how long each phoneme lasts.

Piper (VITS) decides every phoneme id's duration in decoder frames (256 samples at
22,050 Hz) inside the graph (`/Ceil_output_0`, `[1, 1, ids]`) and only outputs the
audio. `examples/turn_fixtures.rs` needs the durations to know where each word ends,
so this copy adds them as a second output, `durations`; weights, inputs and the
audio output are unchanged. Only that fixture tool uses the copy.

  python3 -m pip install onnx
  python3 scripts/piper-durations-model.py [models/en_US-joe-medium.onnx [OUT]]

OUT defaults to the model's name with `.durations.onnx` (ignored by git).
"""

import sys

import onnx
from onnx import TensorProto, helper

DURATIONS_NODE_OUTPUT = "/Ceil_output_0"


def main():
    src = sys.argv[1] if len(sys.argv) > 1 else "models/en_US-joe-medium.onnx"
    out = sys.argv[2] if len(sys.argv) > 2 else src.removesuffix(".onnx") + ".durations.onnx"
    model = onnx.load(src)
    graph = model.graph
    if not any(DURATIONS_NODE_OUTPUT in node.output for node in graph.node):
        sys.exit(f"{src}: no {DURATIONS_NODE_OUTPUT}; not a Piper VITS export this script knows")
    graph.node.append(helper.make_node("Identity", [DURATIONS_NODE_OUTPUT], ["durations"]))
    graph.output.append(helper.make_tensor_value_info("durations", TensorProto.FLOAT, None))
    onnx.save(model, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
