"""The layered FRE-RNN on any layer graph, with its feed-forward twin."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor, nn

from frernn.errors import FrernnError
from frernn.models.graph import LayerGraph

StepHook = Callable[[int, Tensor, Tensor], None]


def glorot(rows: int, cols: int, generator: torch.Generator) -> Tensor:
    """Glorot-uniform matrix U(+-sqrt(6 / (rows + cols)))."""
    bound = math.sqrt(6.0 / (rows + cols))
    return (torch.rand(rows, cols, generator=generator) * 2 - 1) * bound


def drive_scale(device: torch.device) -> float:
    """Factor folded into every drive for ``tanh_of_scaled``: 2 on CPU (exact, a power of two)."""
    return 2.0 if device.type == "cpu" else 1.0


def tanh_of_scaled(drive: Tensor, out: Tensor) -> Tensor:
    """tanh(drive / drive_scale) into ``out``.

    On CPU ATen's tanh is ~5x slower than its sigmoid, so there tanh h = 2 sigmoid(2h) - 1
    (the same float rounding in absolute terms, 1e-7 in float32; NaN propagates).
    """
    if drive.device.type != "cpu":
        return torch.tanh(drive, out=out)
    return torch.sigmoid(drive, out=out).mul_(2).sub_(1)


@dataclass(frozen=True)
class EdgeGroup:
    """Edges sharing one layer offset: their sources, targets and rows of the matrix stack, as
    selectors and as ``(src, dst, row)`` triples (0-based)."""

    src: slice | Tensor
    dst: slice | Tensor
    rows: slice | Tensor
    edges: tuple[tuple[int, int, int], ...]


def _selector(indices: list[int]) -> slice | Tensor:
    """A strided slice where the indices form a progression (a view), else an index tensor."""
    step = indices[1] - indices[0] if len(indices) > 1 else 1
    if step > 0 and all(b - a == step for a, b in zip(indices, indices[1:], strict=False)):
        return slice(indices[0], indices[-1] + 1, step)
    return torch.tensor(indices)


def _gathered_edges(drive: Tensor, source: Tensor, mats: Tensor, group: EdgeGroup) -> None:
    """Add the drive of an edge group whose layers are no progression (AGT) into ``drive``."""
    inputs = source[group.src]
    if isinstance(group.dst, slice):
        drive[group.dst].baddbmm_(inputs, mats)
    else:
        drive.index_add_(0, group.dst, torch.bmm(inputs, mats))


def _as_batch(view: Tensor) -> Tensor | None:
    """``view`` (E, [R,] m, n) as an (E*R, m, n) view, or None where its strides do not allow."""
    try:
        return view.view(-1, *view.shape[-2:])
    except RuntimeError:
        return None


class EdgeLayout:
    """The edges of a layer graph grouped by layer offset, so one relaxation step is a handful
    of batched matmuls on views; where every edge joins layers of opposite parity, also per
    parity of the target (half steps).

    States are ``(L, m, n)``, or ``(L, R, m, n)`` for R runs of a pack (stack ``(E, R, n, n)``):
    a group whose views flatten over (edges, runs) is one batched matmul, any other is one per
    edge, each over all runs.
    """

    def __init__(self, edges: list[tuple[int, int]]) -> None:
        by_offset: dict[int, list[int]] = {}
        for k, (src, dst) in enumerate(edges):
            by_offset.setdefault(dst - src, []).append(k)
        offsets = [sorted(by_offset[o], key=lambda k: edges[k][0]) for o in sorted(by_offset)]
        self.stack_order: list[int] = [k for members in offsets for k in members]
        row = {k: r for r, k in enumerate(self.stack_order)}

        def group(members: list[int]) -> EdgeGroup:
            triples = tuple((edges[k][0] - 1, edges[k][1] - 1, row[k]) for k in members)
            return EdgeGroup(
                src=_selector([t[0] for t in triples]),
                dst=_selector([t[1] for t in triples]),
                rows=_selector([t[2] for t in triples]),
                edges=triples,
            )

        self.groups: list[EdgeGroup] = [group(members) for members in offsets]
        self.half_groups: tuple[list[EdgeGroup], ...] | None = None
        if all((dst - src) % 2 for src, dst in edges):
            self.half_groups = tuple(
                [
                    group(part)
                    for members in offsets
                    if (part := [k for k in members if (edges[k][1] - 1) % 2 == parity])
                ]
                for parity in (0, 1)
            )

    def to(self, device: torch.device) -> None:
        """Move the index tensors of the groups to ``device``."""

        def to(s: slice | Tensor) -> slice | Tensor:
            return s.to(device) if isinstance(s, Tensor) else s

        def moved(groups: list[EdgeGroup]) -> list[EdgeGroup]:
            return [EdgeGroup(to(g.src), to(g.dst), to(g.rows), g.edges) for g in groups]

        self.groups = moved(self.groups)
        if self.half_groups is not None:
            self.half_groups = tuple(moved(groups) for groups in self.half_groups)

    @staticmethod
    def edge_ops(
        source: Tensor, drive: Tensor, stack: Tensor, groups: list[EdgeGroup]
    ) -> list[Callable[[], None]]:
        """One call per edge group adding its drive from ``source`` into ``drive``, views bound
        once so that a relaxation step does no per-layer Python work."""
        ops: list[Callable[[], None]] = []
        for g in groups:
            if source.dim() == 3 and not (isinstance(g.src, slice) and isinstance(g.dst, slice)):
                ops.append(partial(_gathered_edges, drive, source, stack[g.rows], g))
                continue
            views = (
                (_as_batch(drive[g.dst]), _as_batch(source[g.src]))
                if isinstance(g.src, slice) and isinstance(g.dst, slice)
                else (None, None)
            )
            if views[0] is not None and views[1] is not None:
                mats = stack[g.rows].reshape(-1, *stack.shape[-2:])
                ops.append(partial(views[0].baddbmm_, views[1], mats))
            else:
                ops += [partial(drive[j].baddbmm_, source[i], stack[r]) for i, j, r in g.edges]
        return ops

    def relax(
        self, state: Tensor, base: Tensor, stack: Tensor, steps: int, hook: StepHook | None = None
    ) -> Tensor:
        """Run ``steps`` synchronous updates s <- tanh(base + sum of edge drives); returns s.

        ``hook(k, state, base)`` may rewrite ``base`` before step k (1-based), e.g. a nudge.
        """
        scale = drive_scale(state.device)
        buffers = (state.clone(), torch.empty_like(state))
        drive = torch.empty_like(state)
        ops = [self.edge_ops(source, drive, stack * scale, self.groups) for source in buffers]
        for k in range(1, steps + 1):
            current = (k - 1) % 2
            if hook is not None:
                hook(k, buffers[current], base)
            torch.mul(base, scale, out=drive)
            for op in ops[current]:
                op()
            tanh_of_scaled(drive, buffers[1 - current])
        return buffers[steps % 2]

    def relax_from_zero(self, base: Tensor, stack: Tensor, steps: int) -> Tensor:
        """``relax`` from the zero state, for a ``base`` that drives layer 1 only (the input).

        Where every edge joins layers of opposite parity (chain, residual), the odd layers stay
        0 in step 1, so Jacobi steps from zero equal alternating in-place updates of the odd and
        the even layers (red-black): each step updates half the layers, with the same result.
        """
        state = torch.zeros_like(base)
        if self.half_groups is None:
            return self.relax(state, base, stack, steps)
        scale = drive_scale(base.device)
        drive, scaled = torch.empty_like(base), stack * scale
        halves = [
            (
                base[parity::2],
                drive[parity::2],
                state[parity::2],
                self.edge_ops(state, drive, scaled, groups),
            )
            for parity, groups in enumerate(self.half_groups)
        ]
        for k in range(steps):
            half_base, half_drive, half_state, ops = halves[k % 2]
            torch.mul(half_base, scale, out=half_drive)
            for op in ops if k else ():  # step 1 reads only the all-zero other half
                op()
            tanh_of_scaled(half_drive, half_state)
        return state


class FeedbackAlignedLinear(torch.autograd.Function):
    """``x @ w`` whose backward sends the error through a fixed matrix instead of ``w.T``."""

    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor, feedback: Tensor) -> Tensor:
        ctx.save_for_backward(x, feedback)
        return x @ w

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor, None]:
        x, feedback = ctx.saved_tensors
        return grad @ feedback, x.mT @ grad, None


class LayeredComputation:
    """What a single layered net and a pack of them compute alike, from a few accessors:
    ``layout``, ``depth``, ``forward_edges``, ``alpha_factor``, ``w_out``, ``e_out_fixed``,
    ``symmetric``, ``first_layer(x)``, ``edge_weight(k)`` and ``_alignment_matrices()``."""

    @torch.no_grad()
    def relax(
        self, state: Tensor, base: Tensor, stack: Tensor, steps: int, hook: StepHook | None = None
    ) -> Tensor:
        """``steps`` synchronous updates from ``state`` (``EdgeLayout.relax``)."""
        return self.layout.relax(state, base, stack, steps, hook)

    @torch.no_grad()
    def relax_from_zero(self, base: Tensor, stack: Tensor, steps: int) -> Tensor:
        """``steps`` updates from the zero state (``EdgeLayout.relax_from_zero``)."""
        return self.layout.relax_from_zero(base, stack, steps)

    @torch.no_grad()
    def free_phase(self, x: Tensor, steps: int) -> Tensor:
        """Free relaxation from zero: the state after ``steps`` steps."""
        return self.relax_from_zero(self.input_drive(x), self.recurrent_stack(), steps)

    def readout(self, top: Tensor) -> Tensor:
        """Logits of the feed-forward readout from the top hidden layer."""
        return top @ self.w_out

    def error_feedback(self) -> Tensor:
        """E_out (classes x n) carrying the output error into the top layer."""
        return self.w_out.mT if self.symmetric else self.e_out_fixed

    def feedforward(self, x: Tensor, feedback_alignment: bool = False) -> Tensor:
        """Logits of the feed-forward twin (feedback removed), differentiable by autograd.

        With ``feedback_alignment`` the backward pass uses the fixed feedback matrices.
        """
        feedback = self._alignment_matrices() if feedback_alignment else None
        states = {1: torch.tanh(self.first_layer(x))}
        for j in range(2, self.depth + 1):
            incoming = [k for k, (_, dst) in enumerate(self.forward_edges) if dst == j]
            h = sum(
                self._linear(states[self.forward_edges[k][0]], self.edge_weight(k), feedback, k)
                for k in incoming
            )
            states[j] = torch.tanh(self.alpha_factor * h)
        top = states[self.depth]
        if feedback is None:
            return top @ self.w_out
        return FeedbackAlignedLinear.apply(top, self.w_out, self.e_out_fixed)

    @staticmethod
    def _linear(x: Tensor, w: Tensor, feedback: list[Tensor] | None, k: int) -> Tensor:
        return x @ w if feedback is None else FeedbackAlignedLinear.apply(x, w, feedback[k])


class LayeredFRERNN(LayeredComputation, nn.Module):
    """Hidden layers of equal width on a LayerGraph, tanh units, softmax readout outside the loop.

    States of all layers are stacked as one ``(L, m, n)`` tensor; edges with the same layer
    offset are applied by one batched matmul on views, so a chain costs two per step.
    """

    def __init__(
        self,
        in_features: int,
        n_classes: int,
        graph: LayerGraph,
        width: int,
        feedback: str,
        alpha: float,
        beta: float,
        generator: torch.Generator,
    ) -> None:
        super().__init__()
        self.graph, self.width, self.alpha, self.beta = graph, width, alpha, beta
        self.symmetric = feedback == "symmetric"
        n = width
        self.w_in = nn.Parameter(glorot(in_features, n, generator))
        self.forward_edges = graph.forward_edges
        self.w_fwd = nn.ParameterList(
            nn.Parameter(glorot(n, n, generator)) for _ in self.forward_edges
        )
        self.w_out = nn.Parameter(glorot(n, n_classes, generator))
        forward_index = {edge: k for k, edge in enumerate(self.forward_edges)}
        self.feedback_edges = graph.feedback_edges
        self.tied = [
            forward_index.get((dst, src)) if self.symmetric else None
            for src, dst in self.feedback_edges
        ]
        n_random = sum(t is None for t in self.tied)
        self.register_buffer(
            "b_fixed",
            torch.stack([glorot(n, n, generator) for _ in range(n_random)])
            if n_random
            else torch.zeros(0, n, n),
        )
        self.register_buffer("e_out_fixed", glorot(n_classes, n, generator))
        self.layout = EdgeLayout(self.forward_edges + self.feedback_edges)

    @property
    def depth(self) -> int:
        return self.graph.depth

    def _apply(self, fn, recurse=True):
        """Move the layout's index tensors along with the parameters."""
        module = super()._apply(fn, recurse)
        self.layout.to(self.w_in.device)
        return module

    def feedback_matrices(self) -> list[Tensor]:
        """The unscaled matrix of every feedback edge: W^T when tied, else its fixed B."""
        fixed = iter(self.b_fixed)
        return [self.w_fwd[t].T if t is not None else next(fixed) for t in self.tied]

    @torch.no_grad()
    def recurrent_stack(self) -> Tensor:
        """All scaled edge matrices (E, n, n) in group order; rebuild after each weight update."""
        mats = [self.alpha * w for w in self.w_fwd] + [
            self.beta * b for b in self.feedback_matrices()
        ]
        if not mats:
            return torch.zeros(0, self.width, self.width, device=self.w_in.device)
        return torch.stack([mats[k] for k in self.layout.stack_order])

    def dense_recurrent_matrix(self) -> Tensor:
        """The full scaled hidden-to-hidden matrix (L*n, L*n), row-vector convention."""
        n, stack = self.width, self.recurrent_stack()
        edges = self.forward_edges + self.feedback_edges
        big = torch.zeros(self.depth * n, self.depth * n, dtype=stack.dtype, device=stack.device)
        for row, k in enumerate(self.layout.stack_order):
            src, dst = edges[k]
            big[(src - 1) * n : src * n, (dst - 1) * n : dst * n] += stack[row]
        return big

    def zero_state(self, batch: int) -> Tensor:
        """All-zero states (L, m, n)."""
        return self.w_in.new_zeros(self.depth, batch, self.width)

    @torch.no_grad()
    def input_drive(self, x: Tensor) -> Tensor:
        """The constant drive ``x W_0`` into layer 1, as the (L, m, n) base of every step."""
        base = self.zero_state(x.shape[0])
        torch.matmul(x.flatten(1), self.w_in, out=base[0])
        return base

    stacked_edges = False  # gradients of the forward edges come as one tensor per edge

    @property
    def alpha_factor(self) -> float:
        return self.alpha

    @staticmethod
    def flat_input(x: Tensor) -> Tensor:
        """The batch as rows ``(m, in)``."""
        return x.flatten(1)

    def first_layer(self, x: Tensor) -> Tensor:
        """The drive ``x W_0`` of layer 1, differentiable."""
        return x.flatten(1) @ self.w_in

    def edge_weight(self, k: int) -> Tensor:
        return self.w_fwd[k]

    def learned(self) -> list[Tensor]:
        """The learned tensors: W_0, the forward edges, W_out."""
        return [self.w_in, *self.w_fwd, self.w_out]

    def set_grads(self, grads: list[Tensor]) -> None:
        """Gradients of ``learned()``, in its order, into ``.grad``."""
        for p, g in zip(self.learned(), grads, strict=True):
            p.grad = g

    def _alignment_matrices(self) -> list[Tensor]:
        """For each forward edge i->j the fixed matrix of its feedback edge j->i (FA)."""
        if self.symmetric:
            raise FrernnError("method fa needs model.feedback: asymmetric")
        matrices = dict(zip(self.feedback_edges, self.feedback_matrices(), strict=True))
        missing = [e for e in self.forward_edges if (e[1], e[0]) not in matrices]
        if missing:
            raise FrernnError(
                f"method fa needs a feedback edge for every forward edge, not {missing[0]}"
            )
        return [matrices[(dst, src)] for src, dst in self.forward_edges]

    def layer_parameters(self) -> list[list[Tensor]]:
        """One parameter group per layer, input to output: W_0, the edges into 2..L, W_out."""
        groups = [[self.w_in]]
        for j in range(2, self.depth + 1):
            groups.append(
                [w for w, (_, dst) in zip(self.w_fwd, self.forward_edges, strict=True) if dst == j]
            )
        return [g for g in groups if g] + [[self.w_out]]
