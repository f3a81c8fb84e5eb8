"""EP for the conv FRE-RNN: free and `recompute`-nudged phases, local conv updates."""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.grad import conv2d_weight

from frernn.models.conv import ConvFRERNN, rho

log = logging.getLogger(__name__)


class ConvEP:
    """Learner: T free steps, K nudged steps, δ_l = (ρ(x_l^free) − ρ(x_l^nudged)) / m.

    The net's timing decides which pools the fc gradient, the logits and the pre-synaptic
    inputs of the conv updates come from (``ConvFRERNN.output_pools``).
    """

    def __init__(self, net: ConvFRERNN, T: int, K: int, nudge: float) -> None:
        self.net, self.T, self.K, self.nudge = net, T, K, float(nudge)
        if K % 2:
            log.warning(
                "ep.K=%d is odd: the free phase of the conv net typically ends in a period-2 "
                "flicker of max-pool winners, which an odd K adds to the lower layers' EP update "
                "(use an even K, e.g. 10)",
                K,
            )

    def parameter_groups(self) -> list[list[Tensor]]:
        """One group per layer, input→output."""
        return self.net.layer_parameters()

    @torch.no_grad()
    def train_step(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """Write the EP update into every ``.grad``; return (free-phase mean CE, free logits)."""
        net, m = self.net, len(x)
        drive = net.input_drive(x)
        free = net.relax(drive, net.initial_state(m), self.T)
        target = F.one_hot(y, net.fc.out_features).to(drive.dtype)
        nudged = net.relax(drive, free, self.K, target, self.nudge)
        pooled = net.output_pools(free)
        for conv, before, x_free, x_nudged in zip(
            net.convs, [x, *pooled[:-1]], free.state, nudged.state, strict=True
        ):
            delta = (rho(x_free) - rho(x_nudged)) / m
            conv.weight.grad = conv2d_weight(before, conv.weight.shape, delta, padding=net.padding)
            conv.bias.grad = delta.sum((0, 2, 3))
        top = pooled[-1].flatten(1)
        logits = net.fc(top)
        error = (logits.softmax(1) - target) / m
        net.fc.weight.grad = error.t() @ top
        net.fc.bias.grad = error.sum(0)
        return F.cross_entropy(logits, y), logits

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        """Logits after the free phase (T steps; with the readout lag, T − 1)."""
        net = self.net
        free = net.relax(net.input_drive(x), net.initial_state(len(x)), self.T)
        return net.fc(net.output_pools(free)[-1].flatten(1))
