"""The mask set: one keep-mask per prunable weight, monotone, stored bit-packed.

Export/import (the contract with external trainers): an `.npz` with one boolean array per weight
(True = kept, stored layout) plus a JSON manifest `<file>.json` listing, per weight: name, shape,
pattern, sparsity, step. Importing checks names and shapes against the model.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from onnxprune.core.atomic import atomic_open, atomic_write_text
from onnxprune.core.errors import OnnxPruneError, OptionError

MANIFEST_VERSION = 1


def count_ones(packed: np.ndarray) -> int:
    """Set bits in a packed uint8 array (np.packbits pads with zero bits)."""
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0: a popcount per byte
        return int(np.bitwise_count(packed).sum(dtype=np.int64))
    return int(np.count_nonzero(np.unpackbits(packed)))


@dataclass
class _Entry:
    bits: np.ndarray
    shape: tuple[int, ...]
    pattern: str
    step: int


@dataclass
class MaskSet:
    """The masks of a pruning run: one boolean array per weight key (True = kept, stored layout), with
    the pattern and step that set each; saved as .npz + a .json manifest (the contract with trainers).

    Example::

        masks = MaskSet.load("masks.npz", {w.key: w.shape for w in find_weights(model).weights})
        ctx, report = prune_model(model, PruneOptions(sparsity=0.7), masks=masks)
        ctx.masks.save("out/masks.npz")   # + masks.npz.json manifest
    """
    entries: dict[str, _Entry] = field(default_factory=dict)

    def __contains__(self, key: str) -> bool:
        return key in self.entries

    def keys(self) -> list[str]:
        return list(self.entries)

    def get(self, key: str) -> np.ndarray:
        e = self.entries[key]
        n = int(np.prod(e.shape, dtype=np.int64))
        return np.unpackbits(e.bits, count=n).astype(bool).reshape(e.shape)

    def packed(self, key: str) -> np.ndarray:
        """The mask as np.packbits stores it (row-major, 1 = kept, zero bits after the last entry);
        read-only: it is the mask itself."""
        bits = self.entries[key].bits.view()
        bits.flags.writeable = False
        return bits

    def set(self, key: str, keep: np.ndarray, pattern: str, step: int) -> None:
        """Set a weight's mask; it may only shrink (a pruned weight never comes back)."""
        keep = np.asarray(keep, dtype=bool)
        if key in self.entries:
            old = self.get(key)
            if old.shape != keep.shape:
                raise OnnxPruneError(f"mask for {key!r}: shape {keep.shape} differs from {old.shape}")
            if np.any(keep & ~old):
                raise OnnxPruneError(f"mask for {key!r} would revive pruned weights; masks are monotone")
        self.entries[key] = _Entry(np.packbits(keep.reshape(-1)), tuple(keep.shape), pattern, step)

    def prune_entries(self, key: str, flat_index: np.ndarray) -> None:
        """Mark the entries at `flat_index` (row-major) pruned, on the packed bits (no unpacking)."""
        index = np.asarray(flat_index, dtype=np.int64)
        np.bitwise_and.at(self.entries[key].bits, index >> 3, ~(np.uint8(0x80) >> (index & 7).astype(np.uint8)))

    def pruned(self, key: str) -> int:
        """How many entries of the weight are pruned."""
        e = self.entries[key]
        return int(np.prod(e.shape, dtype=np.int64)) - count_ones(e.bits)

    def sparsity(self, key: str) -> float:
        n = int(np.prod(self.entries[key].shape, dtype=np.int64))
        return self.pruned(key) / n if n else 0.0

    def manifest(self) -> dict:
        return {
            "schema": "onnxprune.masks",
            "version": MANIFEST_VERSION,
            "masks": [
                {"name": k, "shape": list(e.shape), "pattern": e.pattern, "sparsity": self.sparsity(k), "step": e.step}
                for k, e in self.entries.items()
            ],
        }

    def save(self, path: str | Path) -> None:
        """Write `path` (.npz, deterministic bytes) and `path.json` (the manifest), atomically."""
        path = Path(path)
        with atomic_open(path) as f, zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED) as z:
            for i, key in enumerate(self.entries):
                buf = io.BytesIO()
                np.lib.format.write_array(buf, self.get(key), allow_pickle=False)
                info = zipfile.ZipInfo(f"mask_{i:05d}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_DEFLATED
                z.writestr(info, buf.getvalue())
        manifest = self.manifest()
        for i, m in enumerate(manifest["masks"]):
            m["array"] = f"mask_{i:05d}"
        atomic_write_text(str(path) + ".json", json.dumps(manifest, indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path, expected: dict[str, tuple[int, ...]] | None = None) -> "MaskSet":
        """Read masks written by `save` (or by a trainer following the same contract)."""
        path = Path(path)
        try:
            manifest = json.loads(Path(str(path) + ".json").read_text())
            arrays = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise OptionError(f"{path}: cannot read masks ({e}); expected an .npz with its .json manifest beside it") from e
        if not isinstance(arrays, np.lib.npyio.NpzFile):
            raise OptionError(f"{path}: not an .npz archive; masks are an .npz (one boolean array per weight) plus a .json manifest")
        entries = manifest.get("masks") if isinstance(manifest, dict) else None
        if not isinstance(entries, list) or not all(isinstance(m, dict) and isinstance(m.get("name"), str) for m in entries):
            arrays.close()
            raise OptionError(f"{path}.json: expected {{\"masks\": [{{\"name\": ..., \"shape\": ..., ...}}, ...]}}; "
                              f"every entry needs a weight name")
        masks = cls()
        with arrays:
            for m in entries:
                name, array = m["name"], m.get("array", m["name"])
                if array not in arrays.files:
                    raise OptionError(f"{path}: manifest names mask {name!r} (array {array!r}) but the .npz lacks it")
                raw = arrays[array]
                if raw.dtype != bool and not (raw.dtype.kind in "iuf" and np.isin(raw, (0, 1)).all()):
                    raise OptionError(f"{path}: mask {name!r} must be boolean (True = kept) or 0/1, not {raw.dtype} values")
                keep = raw.astype(bool)
                if "shape" in m and tuple(m["shape"]) != keep.shape:
                    raise OptionError(f"{path}: mask {name!r} is stored with shape {keep.shape} but the manifest says {tuple(m['shape'])}")
                if expected is not None:
                    if name not in expected:
                        raise OptionError(f"{path}: mask {name!r} matches no prunable weight of the model")
                    if tuple(expected[name]) != keep.shape:
                        raise OptionError(f"{path}: mask {name!r} has shape {keep.shape}, the weight has {tuple(expected[name])}")
                try:
                    step = int(m.get("step", 0))
                except (TypeError, ValueError):
                    raise OptionError(f"{path}: mask {name!r} has step {m.get('step')!r}; expected an integer") from None
                masks.set(name, keep, str(m.get("pattern", "imported")), step)
        return masks
