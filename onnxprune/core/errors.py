"""One error hierarchy. Every message names the file, tensor or node and says what to do.

A message that names an option (the fix) holds it as an `Opt`: a neutral key, rendered by the
interface that reports the error in its own terms: the CLI flag (`--data FILE`), the recipe key
(`data.calibration="FILE"`, for `onnxprune run`) or the Python parameter (`data='FILE'`, `str(e)`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable

# Python parameter names where they differ from the key's last part
_PYTHON_NAMES = {"data.calibration": "data", "target.name": "target"}


@dataclass(frozen=True)
class Opt:
    """An option named in a message: `key` is the recipe key ("section.name"); `value` an example value."""

    key: str
    value: Any = None

    @property
    def name(self) -> str:
        return self.key.rpartition(".")[2]


def _shapes_value(value: list[str]) -> str:
    """["x=1x3xHxW"] as the Python `shapes` mapping: {'x': (1, 3, H, W)}."""
    items = []
    for text in value:
        name, _, dims = text.partition("=")
        items.append(f"{name!r}: ({', '.join(dims.split('x'))}{',' if dims.count('x') == 0 else ''})")
    return "{" + ", ".join(items) + "}"


def python_name(opt: Opt) -> str:
    """An option as a Python keyword argument: `sparsity`, `nm_remainder='pad'`, `shapes={'x': (1, 3, H, W)}`."""
    name = _PYTHON_NAMES.get(opt.key, opt.name)
    if opt.value is None:
        return name
    return f"{name}={_shapes_value(opt.value) if opt.key == 'data.shapes' else repr(opt.value)}"


def recipe_key(opt: Opt) -> str:
    """An option as a recipe key (what `--set` takes): `prune.sparsity`, `data.calibration="FILE"`."""
    return opt.key if opt.value is None else f"{opt.key}={json.dumps(opt.value)}"  # JSON scalars and lists are TOML


class OnnxPruneError(Exception):
    """A usage or input error: the CLI prints the message on one line and exits with code 2.

    The message is given in parts: text, and `Opt`s that `render` names in the interface's terms."""

    exit_code = 2

    def __init__(self, *parts: str | Opt):
        super().__init__(*parts)
        self.parts = parts

    @property
    def options(self) -> list[Opt]:
        return [p for p in self.parts if isinstance(p, Opt)]

    def render(self, name: Callable[[Opt], str] = python_name) -> str:
        """One line, even when it quotes a multi-line message (onnx's checker, onnxruntime, a path)."""
        text = "".join(p if isinstance(p, str) else name(p) for p in self.parts)
        return " ".join(line.strip() for line in text.splitlines() if line.strip())

    def __str__(self) -> str:
        return self.render()


class ModelLoadError(OnnxPruneError):
    """The model file cannot be read, parsed or trusted."""


class ExternalDataError(ModelLoadError):
    """An external-data reference is missing, unsafe or inconsistent."""


class AnalysisError(OnnxPruneError):
    """A weight or node cannot be analysed as asked."""


class OptionError(OnnxPruneError):
    """An option, recipe key or override is invalid."""


class DataError(OnnxPruneError):
    """Calibration or evaluation data does not match the model."""


class HookError(OnnxPruneError):
    """A fine-tuning hook returned something the pipeline cannot accept."""


class TargetError(OnnxPruneError):
    """A target description is invalid or a model cannot be packed for it."""


class NothingToPackError(TargetError):
    """No weight of the model is pruned: packing would produce nothing."""


class OutputError(OnnxPruneError):
    """An output cannot be written where it was asked for."""
