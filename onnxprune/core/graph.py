"""Walking a model's graphs: subgraph paths (the part of a weight key before "::"), node references,
outer-scope reads, and node attributes decoded one way for every caller."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import onnx
import onnx.helper


def unique_path(path: str, seen: set[str]) -> str:
    """A subgraph's path, made unique: graph names may repeat (two Ifs with "then_branch"s), and
    the second gets "#2". Every walker visits subgraphs depth first in node and attribute order."""
    unique, n = path, 1
    while unique in seen:
        n += 1
        unique = f"{path}#{n}"
    seen.add(unique)
    return unique


def subgraph_name(graph_name: str, node_name: str, op_type: str, attr_name: str, index: int, count: int) -> str:
    """A subgraph's name in weight keys: the graph's own, else NODE.ATTR (NODE.ATTRi, i = `index`, when the
    attribute holds `count` > 1 graphs). The one rule every walker (onnx or graphsurgeon) uses."""
    return graph_name or f"{node_name or op_type}.{attr_name}{index if count > 1 else ''}"


def node_subgraphs(node: onnx.NodeProto) -> Iterator[tuple[str, onnx.GraphProto]]:
    """A node's subgraphs (If branches, Loop/Scan bodies), each with its `subgraph_name`."""
    for attr in node.attribute:
        sub = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else \
            list(attr.graphs) if attr.type == onnx.AttributeProto.GRAPHS else []
        for i, g in enumerate(sub):
            yield subgraph_name(g.name, node.name, node.op_type, attr.name, i, len(sub)), g


def walk_graphs(graph: onnx.GraphProto, path: str = "", seen: set[str] | None = None) -> Iterator[tuple[str, onnx.GraphProto]]:
    """(path, graph) for the graph and every subgraph, depth first in node and attribute order."""
    seen = {path} if seen is None else seen
    yield path, graph
    for node in graph.node:
        for name, g in node_subgraphs(node):
            yield from walk_graphs(g, unique_path(f"{path}/{name}" if path else name, seen), seen)


@dataclass(frozen=True, order=True)
class NodeRef:
    """A node by position: its graph's path as `walk_graphs` gives it and its index in that graph's
    node list (names are optional and may repeat). Valid until a pass adds, removes or reorders nodes."""

    graph: str
    index: int

    def resolve(self, graph: onnx.GraphProto) -> onnx.NodeProto | None:
        """The node in the model whose main graph is `graph`; None when the graph or index is gone."""
        sub = graph if not self.graph else next((g for p, g in walk_graphs(graph) if p == self.graph), None)
        return sub.node[self.index] if sub is not None and self.index < len(sub.node) else None


def subgraph_outer_refs(node: onnx.NodeProto) -> set[str]:
    """Outer-scope names a node's subgraphs read."""
    refs: set[str] = set()
    for _, g in node_subgraphs(node):
        local = {i.name for i in g.input} | {t.name for t in g.initializer}
        for n in g.node:
            local |= set(n.output)
        for n in g.node:
            refs |= {i for i in n.input if i and i not in local}
            refs |= subgraph_outer_refs(n) - local
        refs |= {o.name for o in g.output if o.name not in local}
    return refs


def attrs(node: onnx.NodeProto) -> dict[str, Any]:
    """A node's attributes by name, with byte strings decoded to str (auto_pad, direction, mode...)."""
    out = {}
    for a in node.attribute:
        v = onnx.helper.get_attribute_value(a)
        out[a.name] = v.decode() if isinstance(v, bytes) else v
    return out
