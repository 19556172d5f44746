"""Encoding texts on the CPU: the packaged MiniLM in PyTorch against the same network exported
to ONNX Runtime, on the quotes-topics texts, measured in the same run.

Both take the same token batches (the texts sorted by length, 64 a batch, as
``TextEncoder.encode`` does). Prints texts per second, the ratio, and the largest 1 - cosine
between the two engines' vectors.

    .venv/bin/python bench/text_engines.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from tlpipe.vectors.text_encoder import load_text_encoder

QUOTES = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "quotes-topics"
BATCH = 64


def batches(encoder, texts: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
    ordered = sorted(texts, key=len, reverse=True)
    return [(tokens.ids.numpy(), tokens.attention_mask.numpy())
            for tokens in (encoder.tokenize(ordered[i:i + BATCH])
                           for i in range(0, len(ordered), BATCH))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    import onnxruntime

    texts = [path.read_text() for path in sorted(QUOTES.glob("*/*.txt"))]
    encoder = load_text_encoder().eval()
    work = batches(encoder, texts)
    with tempfile.TemporaryDirectory() as folder:
        graph = Path(folder) / "minilm.onnx"
        ids, mask = (torch.from_numpy(array) for array in work[0])
        batch, length = torch.export.Dim("batch"), torch.export.Dim("length", max=512)
        torch.onnx.export(encoder, (ids[:2, :16], mask[:2, :16]), str(graph),
                          input_names=["ids", "attention_mask"], output_names=["vectors"],
                          dynamo=True, external_data=False, verbose=False,
                          dynamic_shapes=({0: batch, 1: length}, {0: batch, 1: length}))
        session = onnxruntime.InferenceSession(str(graph), providers=["CPUExecutionProvider"])

        def run_torch() -> np.ndarray:
            with torch.inference_mode():
                return np.concatenate([encoder(torch.from_numpy(i), torch.from_numpy(m)).numpy()
                                       for i, m in work])

        def run_onnx() -> np.ndarray:
            return np.concatenate([session.run(None, {"ids": i, "attention_mask": m})[0]
                                   for i, m in work])

        timings = {"torch": [], "onnxruntime": []}
        outputs = {}
        for _ in range(args.repeats):  # alternating, so both see the same machine state
            for name, run in (("torch", run_torch), ("onnxruntime", run_onnx)):
                started = time.perf_counter()
                outputs[name] = run()
                timings[name].append(time.perf_counter() - started)
    a, b = outputs["torch"], outputs["onnxruntime"]
    cosine = (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    best = {name: min(seconds) for name, seconds in timings.items()}
    print(f"{len(texts)} texts, {len(work)} batches of up to {BATCH}, torch threads "
          f"{torch.get_num_threads()}, best of {args.repeats}:")
    for name, seconds in best.items():
        print(f"  {name:12s} {seconds:6.2f} s  {len(texts) / seconds:7.1f} texts/s")
    print(f"  onnxruntime / torch speed: {best['torch'] / best['onnxruntime']:.2f}x; "
          f"largest 1 - cosine between them: {(1 - cosine).max():.2e}")


if __name__ == "__main__":
    main()
