"""Gradual pruning of the sample MLP (or CNN) to 90% in 5 cubic-schedule steps, with and without
the fine-tuning hook, printing sparsity and evaluation accuracy after every step.

    python samples/gradual.py [--cnn] [--sparsity 0.9] [--steps 5]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnxruntime as ort

from onnxprune.core.model import Model
from onnxprune.jobs.prune_job import PruneOptions, prune_model

HERE = Path(__file__).resolve().parent


def accuracy(model: Model, data: dict) -> float:
    session = ort.InferenceSession(model.proto.SerializeToString(), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"input": data["input"]})[0]
    return float(np.mean(logits.argmax(-1) == data["labels"]))


def gradual(name: str, sparsity: float, steps: int, hook: bool) -> list[tuple[int, float, float]]:
    data = dict(np.load(HERE / f"digits{'_cnn' if name == 'cnn' else ''}_eval.npz"))
    model = Model.load(HERE / f"digits_{name}.onnx")
    opts = PruneOptions(sparsity=sparsity, steps=steps, hooks=[f"{HERE / 'finetune_hook.py'}:finetune"] if hook else [],
                        min_params=0)
    rows: list[tuple[int, float, float]] = []

    def on_step(ctx, result):
        if result.pass_name == ("hooks" if hook else "prune"):
            step = len(rows) + 1
            total = sum(w.params for w in ctx.analysis.weights)
            pruned = sum(ctx.masks.sparsity(w.key) * w.params for w in ctx.analysis.weights if w.key in ctx.masks)
            rows.append((step, pruned / total, accuracy(ctx.model, data)))

    prune_model(model, opts, progress=False, on_step=on_step)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--cnn", action="store_true")
    ap.add_argument("--sparsity", type=float, default=0.9)
    ap.add_argument("--steps", type=int, default=5)
    args = ap.parse_args()
    name = "cnn" if args.cnn else "mlp"
    dense = accuracy(Model.load(HERE / f"digits_{name}.onnx"),
                     dict(np.load(HERE / f"digits{'_cnn' if args.cnn else ''}_eval.npz")))
    with_hook = gradual(name, args.sparsity, args.steps, hook=True)
    without = gradual(name, args.sparsity, args.steps, hook=False)
    print(f"digits_{name}: dense accuracy {dense:.4f}; cubic schedule to {args.sparsity:.0%} in {args.steps} steps")
    print("step  sparsity  accuracy (hook)  accuracy (no hook)")
    for (step, s, acc_hook), (_, _, acc_plain) in zip(with_hook, without):
        print(f"{step:>4}  {s:>8.1%}  {acc_hook:>15.4f}  {acc_plain:>18.4f}")


if __name__ == "__main__":
    main()
