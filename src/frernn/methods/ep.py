"""Equilibrium Propagation for the layered FRE-RNN, with its three nudge rules."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from frernn.models.layered import LayeredFRERNN
from frernn.models.layered_pack import LayeredPack

NUDGE_RULES = ("fixed", "accumulate", "recompute")
GRAPHS_ENV = "FRERNN_CUDA_GRAPHS"  # "0" turns CUDA-graph capture off

log = logging.getLogger(__name__)


def softmax_cross_entropy(logits: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """(softmax over classes, mean cross-entropy over the batch, per run of a pack) from one
    log-sum-exp; torch's own kernels take ~3x longer on CPU for few classes (0.2 ms per batch
    of 500). ``logits`` are ``([R,] m, classes)``, ``y`` ``([R,] m)``."""
    shifted = logits - logits.amax(-1, keepdim=True)
    exp = shifted.exp()
    total = exp.sum(-1, keepdim=True)
    probs = exp.div_(total)
    losses = (total.log_() - shifted.gather(-1, y[..., None])).squeeze(-1)
    return probs, losses.mean(-1)


class GraphedCall:
    """``fn`` of tensors, captured as one CUDA graph per input shape and replayed.

    Inputs are copied into static buffers; the returned tensors are static too (overwritten by
    the next call). ``capture=False`` keeps the same buffer semantics but simply reruns ``fn``
    (the CPU stand-in, so the plumbing runs everywhere); a failed capture falls back to it.
    """

    def __init__(self, fn: Callable[..., Sequence[Tensor]], capture: bool) -> None:
        self.fn, self.capture = fn, capture
        self.entries: dict[tuple, tuple[Callable[[], None], list[Tensor], list[Tensor]]] = {}

    def __call__(self, *inputs: Tensor) -> list[Tensor]:
        key = tuple((t.shape, t.dtype, t.device) for t in inputs)
        if key not in self.entries:
            self.entries[key] = self._record([t.clone() for t in inputs])
        replay, static_in, static_out = self.entries[key]
        for buffer, t in zip(static_in, inputs, strict=True):
            buffer.copy_(t)
        replay()
        return static_out

    def _record(self, static_in: list[Tensor]):
        if self.capture:
            try:
                return self._capture(static_in)
            except RuntimeError as exc:
                log.warning("CUDA graph capture failed (%s); running eagerly", exc)
                self.capture = False
        static_out = [t.clone() for t in self.fn(*static_in)]

        def rerun() -> None:
            for buffer, t in zip(static_out, self.fn(*static_in), strict=True):
                buffer.copy_(t)

        return rerun, static_in, static_out

    def _capture(self, static_in: list[Tensor]):
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):  # warm-up: cuBLAS handles and workspaces exist before capture
                self.fn(*static_in)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = list(self.fn(*static_in))
        return graph.replay, static_in, static_out


class GraphedLearner:
    """A learner whose ``_update(x, y)`` and ``_predict(x)`` run as captured CUDA graphs on a GPU
    (``cuda_graphs``; FRERNN_CUDA_GRAPHS=0 turns capture off) and eagerly on CPU."""

    net: torch.nn.Module
    cuda_graphs: bool
    _graphed: dict[str, GraphedCall]

    def parameter_groups(self) -> list[list[Tensor]]:
        return self.net.layer_parameters()

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        """Test-time output of the free phase (logits, or P-EP's output state)."""
        return self._run("predict", self._predict, x)[0]

    def _update(self, x: Tensor, y: Tensor) -> Sequence[Tensor]: ...

    def _predict(self, x: Tensor) -> Sequence[Tensor]: ...

    def graph_calls(self, capture: bool) -> None:
        """Route train_step and predict through GraphedCall (capturing only when ``capture``)."""
        self._graphed = {
            name: GraphedCall(fn, capture)
            for name, fn in (("train", self._update), ("predict", self._predict))
        }

    def _run(self, name: str, fn: Callable[..., Sequence[Tensor]], *inputs: Tensor):
        """``fn(*inputs)``: eagerly, or through the CUDA graph of this input shape."""
        if not self._graphed and self.cuda_graphs and inputs[0].is_cuda:
            self.graph_calls(capture=True)
        graphed = self._graphed.get(name)
        return graphed(*inputs) if graphed is not None else fn(*inputs)


def graphs_enabled(requested: bool | None) -> bool:
    """CUDA-graph capture unless turned off by argument or FRERNN_CUDA_GRAPHS=0."""
    return os.environ.get(GRAPHS_ENV, "1") != "0" if requested is None else requested


class LayeredEP(GraphedLearner):
    """Free phase (T steps from zero), nudged phase (K steps), contrastive updates into .grad,
    for one net or a ``LayeredPack`` (per-member batches ``(R, m, ...)``, losses ``(R,)``).

    On CUDA both the training step and inference run as captured CUDA graphs (fixed T and K
    make every step's kernels static); ``cuda_graphs=False`` or FRERNN_CUDA_GRAPHS=0 turns
    that off. On CPU they run eagerly.
    """

    def __init__(
        self,
        net: LayeredFRERNN | LayeredPack,
        T: int,
        K: int,
        nudge: float,
        rule: str,
        cuda_graphs: bool | None = None,
    ) -> None:
        if rule not in NUDGE_RULES:
            raise ValueError(f"unknown nudge rule {rule!r}")
        self.net, self.T, self.K, self.nudge, self.rule = net, T, K, nudge, rule
        self.cuda_graphs = graphs_enabled(cuda_graphs)
        self._graphed = {}
        edges = net.forward_edges
        self._edge_index = {
            torch.device("cpu"): (
                torch.tensor([i - 1 for i, _ in edges], dtype=torch.long),
                torch.tensor([j - 1 for _, j in edges], dtype=torch.long),
            )
        }

    @torch.no_grad()
    def train_step(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        self._edges_on(x.device)
        loss, logits, *grads = self._run("train", self._update, x, y)
        self.net.set_grads(grads)
        return loss, logits

    def _predict(self, x: Tensor) -> tuple[Tensor]:
        return (self.net.readout(self.net.free_phase(x, self.T)[-1]),)

    def _update(self, x: Tensor, y: Tensor) -> tuple[Tensor, ...]:
        """(loss, free logits, grads of ``net.learned()``): one EP step, no side effects."""
        net = self.net
        stack = net.recurrent_stack()
        base = net.input_drive(x)
        free = net.relax_from_zero(base, stack, self.T)
        logits = net.readout(free[-1])
        target = torch.zeros_like(logits).scatter_(-1, y[..., None], 1.0)
        probs, loss = softmax_cross_entropy(logits, y)
        error = probs - target
        nudged = net.relax(free, base, stack, self.K, self._nudge_hook(error, target))
        if self.rule == "accumulate":
            readout_error = softmax_cross_entropy(net.readout(nudged[-1]), y)[0] - target
        else:
            readout_error = error
        grads = self._grads(x, free, free - nudged, readout_error)
        return loss, logits, *grads

    def _nudge_hook(self, error: Tensor, target: Tensor):
        """The per-step rewrite of the top layer's drive that implements the nudge rule."""
        e_out = self.net.error_feedback()
        first = -self.nudge * (error @ e_out)

        def fixed(k: int, state: Tensor, base: Tensor) -> None:
            if k == 1:
                base[-1] += first

        def accumulate(k: int, state: Tensor, base: Tensor) -> None:
            base[-1] += first

        plain_top: list[Tensor] = []

        def recompute(k: int, state: Tensor, base: Tensor) -> None:
            if k == 1:
                plain_top.append(base[-1].clone())
            current = torch.softmax(self.net.readout(state[-1]), dim=-1) - target
            torch.add(plain_top[0], current @ e_out, alpha=-self.nudge, out=base[-1])

        return {"fixed": fixed, "accumulate": accumulate, "recompute": recompute}[self.rule]

    def _edges_on(self, device: torch.device) -> tuple[Tensor, Tensor]:
        """(sources, targets) of the forward edges as index tensors on ``device`` (cached)."""
        if device not in self._edge_index:
            cpu = self._edge_index[torch.device("cpu")]
            self._edge_index[device] = tuple(t.to(device) for t in cpu)
        return self._edge_index[device]

    def _grads(self, x: Tensor, free: Tensor, diff: Tensor, readout_error: Tensor) -> list[Tensor]:
        """grad W_ij = s_i^T (s_j^free - s_j^nudged) / m, grad W_out = s_L^T e / m."""
        net, m = self.net, free.shape[-2]
        grads = [net.flat_input(x).mT @ diff[0] / m]
        if net.forward_edges:
            src, dst = self._edges_on(free.device)
            edges = torch.matmul(free[src].mT, diff[dst]) / m
        else:
            edges = free.new_zeros(0, *free.shape[1:-2], free.shape[-1], free.shape[-1])
        grads += [edges] if net.stacked_edges else list(edges)
        return [*grads, free[-1].mT @ readout_error / m]
