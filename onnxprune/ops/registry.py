"""The op registry: specs by (domain, op type). Register a spec for a custom op from your own package."""

from __future__ import annotations

from onnxprune.ops.spec import OpSpec

_SPECS: dict[tuple[str, str], OpSpec] = {}


def _domain(domain: str | None) -> str:
    return "" if domain in (None, "", "ai.onnx") else domain


def register(spec: OpSpec) -> OpSpec:
    """Make `spec` answer for each of its op types in its domain (replacing an earlier spec)."""
    for op in spec.op_types:
        _SPECS[(_domain(spec.domain), op)] = spec
    return spec


def spec_for(op_type: str, domain: str | None = "") -> OpSpec | None:
    """The spec of `op_type` in `domain` ("" and "ai.onnx" are the default domain), None if none."""
    return _SPECS.get((_domain(domain), op_type))


def all_specs() -> list[OpSpec]:
    """Every registered spec once, in registration order."""
    return list(dict.fromkeys(_SPECS.values()))
