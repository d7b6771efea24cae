"""Hierarchies to embed: a generated balanced tree and the package's own module/class tree, their
transitive closure, and graph distances.

Introduced in {doc}`/book/part10/07-hyperbolic`.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections import deque
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Tree:
    """A rooted tree: node names and the parent of each node (the root's parent is -1).

    Introduced in {doc}`/book/part10/07-hyperbolic`.
    """

    names: tuple[str, ...]
    """One name per node; node 0 is the root."""
    parents: tuple[int, ...]
    """``parents[i]`` is node i's parent (-1 for the root); every parent comes before its children."""

    def __post_init__(self) -> None:
        if len(self.names) != len(self.parents) or not self.names:
            raise ValueError("parents: must give one parent per name, for at least one node")
        if self.parents[0] != -1 or any(not 0 <= p < i for i, p in enumerate(self.parents) if i):
            raise ValueError(
                "parents: node 0 must be the root (-1) and each parent precede its child"
            )

    def __len__(self) -> int:
        return len(self.names)

    @property
    def depths(self) -> list[int]:
        """Each node's distance from the root, in edges."""
        depth = [0] * len(self)
        for i in range(1, len(self)):
            depth[i] = depth[self.parents[i]] + 1
        return depth

    def closure(self) -> torch.Tensor:
        """Every (ancestor, descendant) pair: the transitive closure that Poincaré embeddings fit.

        :returns: ``(P, 2)`` int64 pairs.
        """
        pairs = []
        for i in range(1, len(self)):
            a = self.parents[i]
            while a != -1:
                pairs.append((a, i))
                a = self.parents[a]
        return torch.tensor(pairs, dtype=torch.long).view(-1, 2)

    def graph_distances(self) -> torch.Tensor:
        """Shortest-path distances in the tree (edges), by breadth-first search from every node.

        :returns: ``(N, N)`` float64.
        """
        n = len(self)
        neighbours = [[] for _ in range(n)]
        for i in range(1, n):
            neighbours[i].append(self.parents[i])
            neighbours[self.parents[i]].append(i)
        out = torch.zeros(n, n, dtype=torch.float64)
        for s in range(n):
            seen, queue = {s: 0}, deque([s])
            while queue:
                u = queue.popleft()
                for v in neighbours[u]:
                    if v not in seen:
                        seen[v] = seen[u] + 1
                        queue.append(v)
            out[s, list(seen)] = torch.tensor(list(seen.values()), dtype=torch.float64)
        return out


def balanced_tree(branching: int, depth: int) -> Tree:
    """The complete tree in which every inner node has ``branching`` children, ``depth`` levels deep.

    :param branching: children per inner node, >= 1.
    :param depth: levels below the root, >= 0.
    :returns: the :class:`Tree`, nodes in breadth-first order, named by their path (``"0.2.1"``).
    :raises ValueError: for a bad ``branching`` or ``depth``.

    Introduced in {doc}`/book/part10/07-hyperbolic`.
    """
    for name, value, low in (("branching", branching, 1), ("depth", depth, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name}: must be an integer >= {low}, got {value!r}")
    names, parents, level = ["0"], [-1], [0]
    for _ in range(depth):
        nxt = []
        for p in level:
            for k in range(branching):
                names.append(f"{names[p]}.{k}")
                parents.append(p)
                nxt.append(len(names) - 1)
        level = nxt
    return Tree(tuple(names), tuple(parents))


def package_tree(package: str = "llmbook") -> Tree:
    """A package's own hierarchy: the package, its subpackages and modules, and the classes and
    functions each module defines (imports excluded), as a tree of dotted names.

    :param package: an importable package name.
    :returns: the :class:`Tree`.

    Introduced in {doc}`/book/part10/07-hyperbolic`.
    """
    root = importlib.import_module(package)
    names, parents, index = [package], [-1], {package: 0}

    def add(name: str, parent: str) -> None:
        index[name] = len(names)
        names.append(name)
        parents.append(index[parent])

    modules = sorted(m.name for m in pkgutil.walk_packages(root.__path__, package + "."))
    for mod_name in modules:
        parent = mod_name.rsplit(".", 1)[0]
        if parent not in index or mod_name.rsplit(".", 1)[1].startswith("_"):
            continue
        add(mod_name, parent)
        module = importlib.import_module(mod_name)
        for attr, obj in sorted(vars(module).items()):
            if attr.startswith("_") or getattr(obj, "__module__", None) != mod_name:
                continue
            if inspect.isclass(obj) or inspect.isfunction(obj):
                add(f"{mod_name}.{attr}", mod_name)
    return Tree(tuple(names), tuple(parents))
