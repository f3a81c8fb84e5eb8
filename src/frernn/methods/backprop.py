"""BP and FA baselines: autograd through a net's feed-forward twin."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from frernn.models.layered_pack import LayeredPack


class Backprop:
    """Softmax cross-entropy on ``net.feedforward``; FA swaps fixed matrices into the backward.

    ``forward_options`` go to ``net.feedforward``: ``feedback_alignment=True`` (FA), or for the
    conv net ``straight_through=True`` (the hard-sigmoid's derivative taken as 1). For a
    ``LayeredPack`` the batches are ``(R, m, ...)`` and the loss is one mean per member.
    """

    def __init__(self, net: nn.Module, **forward_options: bool) -> None:
        self.net, self.forward_options = net, forward_options

    def parameter_groups(self) -> list[list[Tensor]]:
        return self.net.layer_parameters()

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        return self.net.feedforward(x)

    def train_step(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        for p in self.net.parameters():
            p.grad = None
        with torch.enable_grad():
            logits = self.net.feedforward(x, **self.forward_options)
            losses = F.cross_entropy(logits.flatten(0, -2), y.flatten(), reduction="none")
            loss = losses.view(y.shape).mean(-1)
            loss.sum().backward()
        if isinstance(self.net, LayeredPack):
            self.net.set_grads([p.grad for p in self.net.learned()])
        return loss.detach(), logits.detach()
