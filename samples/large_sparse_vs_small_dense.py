"""Large-sparse vs small-dense at equal non-zeros (Zhu & Gupta 2017, "To prune, or not to prune") on
the bundled digits task.

Large-sparse: the bundled digits MLP (64-256-128-10, 50,432 weights) pruned gradually with the cubic
schedule (10 steps, one global magnitude ranking; per-layer sparsity starves the 1,280-weight output
layer) and the sample fine-tuning hook (8 epochs of Adam per step) to sparsity s, through onnxprune's
Python API. Small-dense: the same architecture with hidden widths h and h/2, h chosen so
its weights match the large model's non-zeros, trained from scratch as make_samples.py trains the
bundled model (40 epochs), plus the 80 epochs the large model fine-tunes. Biases (< 1% of either
model) are not counted on either side. Accuracy on the 300-sample evaluation split; small-dense: mean
over `--seeds` initialisations.

    python samples/large_sparse_vs_small_dense.py [--sparsities 0.9,0.95,0.98,0.99] [--seeds 2]
        [--scope global|layer] [--plot docs/large-sparse.png | --no-plot]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # tiny matrices: a second BLAS thread only spins

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import finetune_hook  # noqa: E402
from finetune_hook import mlp, train  # noqa: E402

from onnxprune.core.model import Model  # noqa: E402
from onnxprune.jobs.prune_job import PruneOptions, prune_model  # noqa: E402

STEPS = 10
EPOCHS_PER_STEP = 8  # of the sample hook's Adam fine-tuning after every pruning step
DENSE_EPOCHS = 40  # make_samples.py's epochs for the bundled MLP


def finetune(ctx):
    """The sample fine-tuning hook, EPOCHS_PER_STEP epochs per pruning step."""
    saved, finetune_hook.EPOCHS = finetune_hook.EPOCHS, EPOCHS_PER_STEP
    try:
        return finetune_hook.finetune(ctx)
    finally:
        finetune_hook.EPOCHS = saved


@contextlib.contextmanager
def one_blas_thread():
    """One BLAS thread where threadpoolctl (a scikit-learn dependency) can set it after numpy loaded."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(1):
        yield


def _load(split: str) -> tuple[np.ndarray, np.ndarray]:
    with np.load(HERE / f"digits_{split}.npz") as d:
        return d["input"].astype(np.float32), d["labels"]


def mlp_weights(h: int) -> int:
    """Weights of a 64-h-(h/2)-10 MLP."""
    return 64 * h + h * (h // 2) + (h // 2) * 10


def width_for(nonzeros: int) -> int:
    """The hidden width whose dense weight count is closest to `nonzeros`."""
    return min(range(2, 257, 2), key=lambda h: abs(mlp_weights(h) - nonzeros))


def large_sparse(sparsity: float, scope: str = "global") -> tuple[int, float]:
    """(non-zero weights, eval accuracy) of the bundled MLP pruned gradually to `sparsity` with the hook
    (deterministic: the hook's shuffles are seeded per step)."""
    model = Model.load(HERE / "digits_mlp.onnx")
    opts = PruneOptions(sparsity=sparsity, steps=STEPS, min_params=0, scope=scope, hooks=[finetune])
    ctx, _ = prune_model(model, opts, progress=False)
    nonzeros = sum(int(np.count_nonzero(ctx.model.read(w.key))) for w in ctx.analysis.weights)
    session = ort.InferenceSession(model.proto.SerializeToString(), providers=["CPUExecutionProvider"])
    x, y = _load("eval")
    return nonzeros, float(np.mean(session.run(None, {"input": x})[0].argmax(-1) == y))


def small_dense(h: int, seed: int) -> float:
    """Eval accuracy of a dense 64-h-(h/2)-10 MLP trained from scratch (He init, Adam)."""
    rng = np.random.default_rng(100 + seed)
    shapes = {"fc1.weight": (64, h), "fc2.weight": (h // 2, h), "fc3.weight": (10, h // 2)}
    fan_in = {"fc1.weight": 64, "fc2.weight": h, "fc3.weight": h // 2}
    p = {k: (rng.standard_normal(s) * np.sqrt(2.0 / fan_in[k])).astype(np.float32) for k, s in shapes.items()}
    p |= {"fc1.bias": np.zeros(h, np.float32), "fc2.bias": np.zeros(h // 2, np.float32),
          "fc3.bias": np.zeros(10, np.float32)}
    x, y = _load("train")
    train(mlp, p, x, y, DENSE_EPOCHS + STEPS * EPOCHS_PER_STEP, 1e-3, seed)
    xe, ye = _load("eval")
    return float(np.mean(mlp(p, xe)[0].argmax(-1) == ye))


def compare(sparsities: list[float], seeds: int, scope: str = "global") -> list[dict]:
    rows = []
    for s in sparsities:
        with one_blas_thread():
            nonzeros, acc = large_sparse(s, scope)
        h = width_for(nonzeros)
        rows.append({"sparsity": s, "nonzeros": nonzeros, "large_acc": acc,
                     "small_width": h, "small_weights": mlp_weights(h),
                     "small_acc": _small(h, seeds)})
        print(rows[-1], file=sys.stderr, flush=True)
    return rows


def _small(h: int, seeds: int) -> float:
    with one_blas_thread():
        return float(np.mean([small_dense(h, seed) for seed in range(seeds)]))


def table(rows: list[dict]) -> str:
    lines = ["| non-zero weights | large-sparse (256-128, sparsity) | accuracy | small-dense (widths) | weights | accuracy |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['nonzeros']:,} | {r['sparsity']:.0%} | {r['large_acc']:.3f} | "
                     f"{r['small_width']}-{r['small_width'] // 2} | {r['small_weights']:,} | {r['small_acc']:.3f} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)", file=sys.stderr)
        return False
    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=110)
    ax.plot([r["nonzeros"] for r in rows], [r["large_acc"] for r in rows], "o-", label="large-sparse (pruned 64-256-128-10)")
    ax.plot([r["small_weights"] for r in rows], [r["small_acc"] for r in rows], "s--", label="small-dense (trained)")
    ax.set_xscale("log")
    ax.set_xlabel("non-zero weights")
    ax.set_ylabel("digits eval accuracy")
    ax.set_title("Large-sparse vs small-dense at equal non-zeros")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)
    return True


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sparsities", default="0.9,0.95,0.98,0.99")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--scope", default="global", choices=("layer", "global"))
    ap.add_argument("--plot", default=str(HERE.parent / "docs" / "large-sparse.png"))
    ap.add_argument("--no-plot", action="store_true")
    a = ap.parse_args(argv)
    rows = compare([float(s) for s in a.sparsities.split(",")], a.seeds, a.scope)
    print(table(rows))
    if not a.no_plot and plot(rows, Path(a.plot)):
        print(f"plot: {a.plot}")
    return rows


if __name__ == "__main__":
    main()
