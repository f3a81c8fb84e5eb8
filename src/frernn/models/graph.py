"""Directed graphs over hidden layers 1..L: chain, residual skips and random AGT edges."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class LayerGraph:
    """Hidden-to-hidden edges ``(src, dst)`` over layers numbered 1..depth."""

    depth: int
    edges: tuple[tuple[int, int], ...]

    @staticmethod
    def chain_edges(depth: int) -> list[tuple[int, int]]:
        """Bidirectional links between neighbouring layers."""
        return [e for i in range(1, depth) for e in ((i, i + 1), (i + 1, i))]

    @classmethod
    def chain(cls, depth: int) -> LayerGraph:
        """The plain layered net: i <-> i+1."""
        return cls(depth, tuple(cls.chain_edges(depth)))

    @classmethod
    def residual(cls, depth: int) -> LayerGraph:
        """Chain plus bidirectional skips 1<->4, 4<->7, ... (Fig. 3a)."""
        skips = [(i, i + 3) for i in range(1, depth - 2, 3)]
        extra = [e for i, j in skips for e in ((i, j), (j, i))]
        return cls(depth, tuple(cls.chain_edges(depth) + extra))

    @classmethod
    def agt(cls, depth: int, p: float, generator: torch.Generator) -> LayerGraph:
        """Chain plus each non-adjacent ordered pair i->j with probability p (Fig. 3c)."""
        pairs = [(i, j) for i in range(1, depth + 1) for j in range(1, depth + 1) if abs(i - j) > 1]
        draws = torch.rand(len(pairs), generator=generator, dtype=torch.float64).tolist()
        extra = [pair for pair, u in zip(pairs, draws, strict=True) if u < p]
        return cls(depth, tuple(cls.chain_edges(depth) + extra))

    @classmethod
    def build(cls, topology: str, depth: int, p: float, generator: torch.Generator) -> LayerGraph:
        """The graph named by a run spec's ``model.topology``."""
        if topology == "chain":
            return cls.chain(depth)
        if topology == "residual":
            return cls.residual(depth)
        return cls.agt(depth, p, generator)

    @property
    def forward_edges(self) -> list[tuple[int, int]]:
        """Learned edges (src < dst), sorted."""
        return sorted(e for e in self.edges if e[0] < e[1])

    @property
    def feedback_edges(self) -> list[tuple[int, int]]:
        """Feedback edges (src > dst), sorted."""
        return sorted(e for e in self.edges if e[0] > e[1])

    def adjacency(self) -> np.ndarray:
        """``A[i-1, j-1] = 1`` where the edge i->j exists."""
        adj = np.zeros((self.depth, self.depth), dtype=int)
        for i, j in self.edges:
            adj[i - 1, j - 1] = 1
        return adj
