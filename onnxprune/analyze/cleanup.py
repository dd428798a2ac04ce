"""Remove what nothing reads, and check that a rewritten model holds nothing unread.

A structural rewrite (channel pruning, its repair, constant folding) replaces constants: a sliced
or refitted weight can leave the old initializer or `Constant` node behind with no reader. Such
leftovers are not harmless: they stay in the file (a pruned model could hold more parameters than
the original) and are counted as parameters. `remove_unused` is one sweep over every graph, in
reverse topological order, O(nodes + edges): a node is kept when one of its outputs is read (by a
later node, a subgraph's outer reference, or a graph output); an initializer when it is read or is
also a graph input (then it is part of the signature). Subgraphs (If/Loop/Scan bodies) are swept
the same way, and the names they read from outer scopes count as reads there.

Only nodes of the standard domains are removed when dead; a node of another domain is kept as it
is (its semantics, side effects included, are unknown here).
"""

from __future__ import annotations

import onnx

from onnxprune.core.errors import OnnxPruneError
from onnxprune.core.graph import node_subgraphs

_STANDARD_DOMAINS = ("", "ai.onnx", "ai.onnx.ml")


class PostconditionError(OnnxPruneError):
    """A rewritten model breaks an invariant every structural pass must keep (a bug in the pass)."""


def _delete(field, indices: list[int]) -> None:
    """Delete the given (ascending) indices from a repeated field, by contiguous runs from the end."""
    k = len(indices) - 1
    while k >= 0:
        end = indices[k]
        start = end
        while k > 0 and indices[k - 1] == start - 1:
            k -= 1
            start -= 1
        del field[start:end + 1]
        k -= 1


def _sweep(graph: onnx.GraphProto, removed: list[str], path: str) -> set[str]:
    """Remove dead nodes and unread initializers of `graph` (and its subgraphs); returns the names it
    reads from outer scopes."""
    live = {o.name for o in graph.output if o.name}
    inputs = {i.name for i in graph.input}
    dead: list[int] = []
    for k in range(len(graph.node) - 1, -1, -1):
        node = graph.node[k]
        needed = any(o in live for o in node.output if o)
        if needed or node.domain not in _STANDARD_DOMAINS:
            live.update(i for i in node.input if i)
            for _, sub in node_subgraphs(node):
                live |= _sweep(sub, removed, f"{path}/{sub.name}")
        else:
            dead.append(k)
            removed.append(f"{path}:node {node.name or node.op_type} ({node.op_type})")
    dead.reverse()
    _delete(graph.node, dead)
    for field in (graph.initializer, graph.sparse_initializer):
        names = [(t.values.name if field is graph.sparse_initializer else t.name) for t in field]
        unread = [k for k, name in enumerate(names) if name not in live and name not in inputs]
        removed.extend(f"{path}:initializer {names[k]}" for k in unread)
        _delete(field, unread)
    local = set(inputs) | {t.name for t in graph.initializer} | {t.values.name for t in graph.sparse_initializer}
    for node in graph.node:
        local.update(o for o in node.output if o)
    return live - local


def remove_unused(proto: onnx.ModelProto) -> list[str]:
    """Remove, in place, every node and initializer no graph output depends on (main graph and
    subgraphs); returns what was removed, one "graph:kind name" line each."""
    removed: list[str] = []
    _sweep(proto.graph, removed, proto.graph.name or "main")
    return removed


def _unread(graph: onnx.GraphProto, found: list[str], path: str) -> set[str]:
    """Append to `found` the initializers and Constant outputs of `graph` (and its subgraphs) that
    nothing reads; returns the names `graph` reads from outer scopes."""
    reads = {o.name for o in graph.output if o.name}
    for node in graph.node:
        reads.update(i for i in node.input if i)
        for _, sub in node_subgraphs(node):
            reads |= _unread(sub, found, f"{path}/{sub.name}")
    inputs = {i.name for i in graph.input}
    for t in graph.initializer:
        if t.name not in reads and t.name not in inputs:
            found.append(f"{path}: initializer {t.name!r}")
    for t in graph.sparse_initializer:
        if t.values.name not in reads and t.values.name not in inputs:
            found.append(f"{path}: sparse initializer {t.values.name!r}")
    local = set(inputs) | {t.name for t in graph.initializer} | {t.values.name for t in graph.sparse_initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in _STANDARD_DOMAINS:
            for o in node.output:
                if o and o not in reads:
                    found.append(f"{path}: Constant {node.name or o!r} output {o!r}")
        local.update(o for o in node.output if o)
    return reads - local


def unused_constants(proto: onnx.ModelProto) -> list[str]:
    """Initializers and Constant outputs (main graph and subgraphs) that nothing reads."""
    found: list[str] = []
    _unread(proto.graph, found, proto.graph.name or "main")
    return found


def check_no_unused(proto: onnx.ModelProto, what: str) -> None:
    """Postcondition of a structural pass: no initializer or Constant output is left unread."""
    found = unused_constants(proto)
    if found:
        more = f" (+{len(found) - 3} more)" if len(found) > 3 else ""
        raise PostconditionError(f"{what} left constants nothing reads: {'; '.join(found[:3])}{more} "
                                 "(a bug in onnxprune: please report it with the model)")


def check_params_not_increased(before: int, after: int, what: str) -> None:
    """Postcondition of a prune: the model never holds more parameters than it did."""
    if after > before:
        raise PostconditionError(f"{what} increased the parameters from {before} to {after} "
                                 "(a bug in onnxprune: please report it with the model)")
