#!/usr/bin/env python3
"""Reference numbers for hearken's Smart Turn v3.2, from pipecat's own Python code.

hearken computes Smart Turn's Whisper log-mel features in Rust
(src/models/whisper_features.rs) and runs the model through ort. This script gives
the numbers to check that against, computed the way pipecat-ai 1.14.0 does it:

  * the features come from the wheel's own `_whisper_features.py`, loaded straight
    out of the downloaded wheel (numpy only; nothing else of pipecat is imported,
    and hearken never imports pipecat at all);
  * the audio is framed as in the wheel's `local_smart_turn_v3.py`
    (`_predict_endpoint`: keep the last 8 s, zero-pad at the front to 8 s), and the
    model is run by onnxruntime with the session options used there.

It writes two things:

  tests/fixtures/smart_turn_reference.json
      For a few committed clips (a whole Piper sentence, the same sentence cut
      mid-phrase, and the 13 s espeak-ng `long_utterance_16k.wav`, of which only the
      last 8 s count): the probability, the mean of each of the 800 feature frames,
      and every feature of every FRAME_STEP-th frame (ending with the last), each
      float32 written in the shortest decimals that read back to the same float32
      (the int8 model turns a one-ulp feature difference into a different answer,
      so the check is to the bit). About 120 KB.
  tests/fixtures/turns/manifest.json
      fills each turn's `reference` with the probability for the whole file and for
      the audio before `cut_ms` (the manifest and WAVs come from
      `cargo run --release --example turn_fixtures`).

Run from anywhere, after `scripts/fetch-models.sh models`:

  python3 -m venv /tmp/smart-turn-venv
  /tmp/smart-turn-venv/bin/pip install 'numpy>=2' onnxruntime==1.31.1
  /tmp/smart-turn-venv/bin/python scripts/make-smart-turn-fixture.py [--wheel WHL] [--models DIR]

The wheel is looked for in DIR/.wheels (where fetch-models.sh keeps it) and
otherwise downloaded with `pip download --no-deps pipecat-ai==1.14.0` into a
temporary directory. WAVs are read as 16-bit PCM divided by 32768, as the Rust tests
read them.
"""

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import types
import wave
import zipfile

import numpy as np
import onnxruntime as ort

PIPECAT = "pipecat-ai==1.14.0"
FEATURES_IN_WHEEL = "pipecat/audio/turn/smart_turn/_whisper_features.py"
MODEL_FILE = "smart-turn-v3.2-cpu.onnx"
RATE = 16000
CLIP_SECONDS = 8
# Every FRAME_STEP-th frame is stored whole, the last (799) included.
FRAME_STEP = 25

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")
TURNS_MANIFEST = os.path.join(FIXTURES, "turns", "manifest.json")
REFERENCE_OUT = os.path.join(FIXTURES, "smart_turn_reference.json")


def find_wheel(models_dir, explicit):
    if explicit:
        return explicit
    cache = os.environ.get("HEARKEN_WHEEL_CACHE", os.path.join(models_dir, ".wheels"))
    found = sorted(glob.glob(os.path.join(cache, "pipecat_ai-1.14.0-*.whl")))
    if found:
        return found[0]
    tmp = tempfile.mkdtemp(prefix="pipecat-wheel-")
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
         "--only-binary=:all:", "--python-version", "3.11", "-d", tmp, PIPECAT],
        check=True,
    )
    return glob.glob(os.path.join(tmp, "*.whl"))[0]


def load_features_module(wheel):
    """`_whisper_features.py` from the wheel, as a module (it imports only numpy)."""
    with zipfile.ZipFile(wheel) as z:
        source = z.read(FEATURES_IN_WHEEL).decode("utf-8")
    module = types.ModuleType("pipecat_whisper_features")
    exec(compile(source, f"{wheel}:{FEATURES_IN_WHEEL}", "exec"), module.__dict__)
    return module


def last_8_s(audio):
    """`truncate_audio_to_last_n_seconds` of local_smart_turn_v3.py."""
    max_samples = CLIP_SECONDS * RATE
    if len(audio) > max_samples:
        return audio[-max_samples:]
    if len(audio) < max_samples:
        return np.pad(audio, (max_samples - len(audio), 0), mode="constant", constant_values=0)
    return audio


class Reference:
    def __init__(self, wheel, model_path):
        self.features_module = load_features_module(wheel)
        # The session options of LocalSmartTurnAnalyzerV3 with cpu_count=1.
        so = ort.SessionOptions()
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.inter_op_num_threads = 1
        so.intra_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(model_path, sess_options=so)

    def features(self, audio):
        return self.features_module.compute_whisper_log_mel_features(
            last_8_s(audio), do_normalize=True)

    def probability(self, audio):
        features = self.features(audio)
        outputs = self.session.run(None, {"input_features": np.expand_dims(features, 0)})
        return float(outputs[0][0].item())


def read_wav(path):
    with wave.open(path, "rb") as w:
        assert w.getnchannels() == 1 and w.getsampwidth() == 2 and w.getframerate() == RATE, path
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    return pcm.astype(np.float32) / 32768.0


class F32List(list):
    """float32 values, written as the shortest decimals that read back exactly."""


def f32_list(values):
    return F32List(np.asarray(values, dtype=np.float32))


def to_json(value):
    if isinstance(value, F32List):
        return "[" + ", ".join(np.format_float_positional(v, unique=True, trim="-")
                               for v in value) + "]"
    return json.dumps(value)


def clip_reference(ref, name, file, samples):
    audio = read_wav(os.path.join(FIXTURES, file))
    if samples is not None:
        audio = audio[:samples]
    features = ref.features(audio)
    frames = list(range(features.shape[1] - 1, -1, -FRAME_STEP))[::-1]
    return {
        "name": name,
        "file": file,
        "samples": len(audio),
        "probability": ref.probability(audio),
        "frame_means": f32_list(features.mean(axis=0)),
        "frames": frames,
        "features": [f32_list(features[:, t]) for t in frames],
    }


def dump_reference(doc, path):
    """JSON with one feature frame per line: small, and diffs stay readable."""
    lines = ["{"]
    for key in ("about", "generator", "pipecat", "onnxruntime", "numpy", "frame_step"):
        lines.append(f"  {json.dumps(key)}: {to_json(doc[key])},")
    lines.append('  "clips": [')
    for i, clip in enumerate(doc["clips"]):
        lines.append("    {")
        for key in ("name", "file", "samples", "probability", "frame_means", "frames"):
            lines.append(f"      {json.dumps(key)}: {to_json(clip[key])},")
        lines.append('      "features": [')
        rows = [f"        {to_json(row)}" for row in clip["features"]]
        lines.append(",\n".join(rows))
        lines.append("      ]")
        lines.append("    }" + ("," if i + 1 < len(doc["clips"]) else ""))
    lines.append("  ]")
    lines.append("}")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=os.path.join(ROOT, "models"))
    parser.add_argument("--wheel", help=f"the {PIPECAT} wheel (default: look, then download)")
    args = parser.parse_args()

    wheel = find_wheel(args.models, args.wheel)
    ref = Reference(wheel, os.path.join(args.models, MODEL_FILE))

    with open(TURNS_MANIFEST) as f:
        manifest = json.load(f)
    for turn in manifest["turns"]:
        audio = read_wav(os.path.join(FIXTURES, "turns", turn["file"]))
        cut = audio[: turn["cut_ms"] * RATE // 1000]
        turn["reference"] = {
            "whole": round(ref.probability(audio), 4),
            "cut": round(ref.probability(cut), 4),
        }
        print(f"{turn['file']:<14} whole {turn['reference']['whole']:.4f}  "
              f"cut {turn['reference']['cut']:.4f}  ({turn['cut_after']!r})")
    with open(TURNS_MANIFEST, "w") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")

    first = manifest["turns"][0]
    clips = [
        clip_reference(ref, f"{first['file']} whole", f"turns/{first['file']}", None),
        clip_reference(ref, f"{first['file']} cut after {first['cut_after']!r}",
                       f"turns/{first['file']}", first["cut_ms"] * RATE // 1000),
        clip_reference(ref, "long_utterance_16k.wav (13 s: the last 8 s count)",
                       "long_utterance_16k.wav", None),
    ]
    for clip in clips:
        print(f"{clip['name']}: probability {clip['probability']:.6f}")
    doc = {
        "about": "Smart Turn v3.2 reference from pipecat's Python code: features of "
                 "the last 8 s (front-padded), [80 mel][800 frames]; frame_means[t] is "
                 "the mean over mel bins of frame t; features[i] is frame frames[i], "
                 "80 values, exact float32. `samples` is how many samples from the "
                 "start of `file`.",
        "generator": "scripts/make-smart-turn-fixture.py",
        "pipecat": PIPECAT,
        "onnxruntime": ort.__version__,
        "numpy": np.__version__,
        "frame_step": FRAME_STEP,
        "clips": clips,
    }
    dump_reference(doc, REFERENCE_OUT)
    print(f"wrote {REFERENCE_OUT} ({os.path.getsize(REFERENCE_OUT)} bytes) and {TURNS_MANIFEST}")


if __name__ == "__main__":
    main()
