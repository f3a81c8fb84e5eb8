"""P-EP learning: free phase, output-nudged phase, the 1/beta-scaled contrastive update."""

from __future__ import annotations

import torch
from torch import Tensor

from frernn.methods.ep import GraphedLearner, graphs_enabled
from frernn.models.pep import ConvPEPNet, PEPNet


class PrototypicalEP(GraphedLearner):
    """Learner for PEPNet / ConvPEPNet: T free steps from zero, K nudged steps, then
    ``.grad = -(1/(beta m)) (dPhi/dtheta(nudged) - dPhi/dtheta(free))``, so that plain SGD with
    per-layer rates applies the published update.

    On CUDA the training step and inference run as captured CUDA graphs (fixed T, K and
    batch shape); FRERNN_CUDA_GRAPHS=0 turns that off.
    """

    def __init__(
        self,
        net: PEPNet | ConvPEPNet,
        T: int,
        K: int,
        beta: float,
        cuda_graphs: bool | None = None,
    ) -> None:
        self.net, self.T, self.K, self.beta = net, T, K, float(beta)
        self.cuda_graphs = graphs_enabled(cuda_graphs)
        self._graphed = {}

    @torch.no_grad()
    def train_step(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """Write the P-EP update into every ``.grad``; return (free-phase MSE, free output)."""
        loss, out, *grads = self._run("train", self._update, x, y)
        params = [p for group in self.net.layer_parameters() for p in group]
        for p, g in zip(params, grads, strict=True):
            p.grad = g
        return loss, out

    def _predict(self, x: Tensor) -> tuple[Tensor]:
        return (self.net.free_phase(x, self.T)[-1],)

    def _update(self, x: Tensor, y: Tensor) -> tuple[Tensor, ...]:
        """(loss, free output, grads in ``layer_parameters`` order): one step, no side effects."""
        net = self.net
        prepared = net.prepare(x)
        free = net.relax(prepared, net.zero_state(x.shape[0]), self.T)
        target = torch.zeros_like(free[-1]).scatter_(1, y[:, None], 1.0)  # no sync: graph-safe
        nudged = net.relax(prepared, free, self.K, target, self.beta)
        grads = net.contrastive(x, prepared, free, nudged, -1.0 / (self.beta * x.shape[0]))
        loss = mse_loss(free[-1], target)
        return loss, free[-1], *grads


def mse_loss(out: Tensor, target: Tensor) -> Tensor:
    """Mean over the batch of 1/2 ||target - out||^2, the loss P-EP nudges with."""
    return 0.5 * (target - out).pow(2).sum(1).mean()
