"""cos(update, BP) per layer: a learner's update against autograd BP of the net's feed-forward twin.

EP's update approaches the BP gradient as the nudge goes to 0; how close it is, layer by layer,
shows what a timing or a method does to the learning signal. Written as ``alignment.json``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from frernn.methods import Learner, build_learner
from frernn.methods.backprop import Backprop
from frernn.models.conv import ConvFRERNN

if TYPE_CHECKING:
    from frernn.data import Data

REFERENCE = "autograd BP of the feed-forward twin (feedback removed), softmax cross-entropy"


def layer_names(net: nn.Module) -> list[str]:
    """Names of the net's parameter groups: conv1..convL, fc; or layer1..layerL, readout."""
    groups = len(net.layer_parameters())
    if isinstance(net, ConvFRERNN):
        return [f"conv{i}" for i in range(1, groups)] + ["fc"]
    return [f"layer{i}" for i in range(1, groups)] + ["readout"]


def _flat(params: list[Tensor], grads: dict[Tensor, Tensor]) -> Tensor:
    """The gradients of ``params`` as one float64 vector (zeros where a parameter has none)."""
    return torch.cat([grads.get(p, torch.zeros_like(p)).flatten().double() for p in params])


def _grads(net: nn.Module) -> dict[Tensor, Tensor]:
    return {p: p.grad.detach().clone() for p in net.parameters() if p.grad is not None}


def _cosine(a: Tensor, b: Tensor) -> float | None:
    """cos(a, b) (kept within [-1, 1] against rounding); None when either vector is zero."""
    norms = float(a.norm() * b.norm())
    return max(-1.0, min(1.0, float(a @ b) / norms)) if norms > 0 else None


def layer_cosines(learner: Learner, x: Tensor, y: Tensor) -> dict[str, float | None]:
    """Per layer, cos(learner's update, BP gradient) on the batch (x, y); leaves no ``.grad``."""
    net = learner.net
    learner.train_step(x, y)
    update = _grads(net)
    Backprop(net).train_step(x, y)
    reference = _grads(net)
    net.zero_grad(set_to_none=True)
    return {
        name: _cosine(_flat(group, update), _flat(group, reference))
        for name, group in zip(layer_names(net), learner.parameter_groups(), strict=True)
    }


def measure(spec: dict[str, Any], data: Data, trained: Learner, diverged: bool) -> dict[str, Any]:
    """alignment.json of a run: cosines on its first training batch at initialisation (the
    seed's net, rebuilt) and after training (empty when the run diverged)."""
    n = min(spec["train"]["batch_size"], len(data.train_y))
    x, y = data.train_x[:n], data.train_y[:n]
    with torch.random.fork_rng(devices=[]):
        fresh = build_learner(spec, data.info, torch.Generator().manual_seed(spec["seed"]))
    fresh.net.to(x.device)
    return {
        "method": spec["method"],
        "reference": REFERENCE,
        "batch": n,
        "layers": layer_names(trained.net),
        "before": layer_cosines(fresh, x, y),
        "after": {} if diverged else layer_cosines(trained, x, y),
    }
