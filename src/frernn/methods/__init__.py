"""Learning rules: EP (layered and conv), BP, FA and P-EP; ``build_learner`` picks one from a run
spec."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import Tensor, nn

from frernn.errors import FrernnError
from frernn.methods.backprop import Backprop
from frernn.methods.ep import LayeredEP
from frernn.models.graph import LayerGraph
from frernn.models.layered import LayeredFRERNN

if TYPE_CHECKING:
    from frernn.data import DatasetInfo


class Learner(Protocol):
    """What the training loop needs from a learning rule (docs/architecture.md)."""

    net: nn.Module

    def parameter_groups(self) -> list[list[Tensor]]: ...

    def train_step(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]: ...

    def predict(self, x: Tensor) -> Tensor: ...


def build_net(spec: dict[str, Any], info: DatasetInfo, generator: torch.Generator) -> nn.Module:
    """The network a run spec describes, initialised from ``generator``."""
    model, ep = spec["model"], spec["ep"]
    if spec["method"] == "pep":
        return build_pep_net(model, info, generator)
    if model["kind"] == "conv":
        from frernn.models.conv import ConvFRERNN
        from frernn.models.timing import Timing

        return ConvFRERNN(
            info.shape,
            model["channels"],
            info.n_classes,
            beta=ep["beta"],
            alpha=ep["alpha"],
            generator=generator,
            timing=Timing.parse(model["timing"]),
        )
    graph = LayerGraph.build(model["topology"], model["depth"], model["agt_p"], generator)
    in_features = info.shape[0] * info.shape[1] * info.shape[2]
    return LayeredFRERNN(
        in_features,
        info.n_classes,
        graph,
        model["width"],
        model["feedback"],
        ep["alpha"],
        ep["beta"],
        generator,
    )


def build_pep_net(
    model: dict[str, Any], info: DatasetInfo, generator: torch.Generator
) -> nn.Module:
    """The P-EP net (output layer inside the dynamics) of a ``method: pep`` spec."""
    from frernn.models.pep import ConvPEPNet, PEPNet

    if model["kind"] == "conv":
        return ConvPEPNet(info.shape, model["channels"], info.n_classes, generator)
    in_features = info.shape[0] * info.shape[1] * info.shape[2]
    return PEPNet(in_features, model["depth"], model["width"], info.n_classes, generator)


def build_learner(spec: dict[str, Any], info: DatasetInfo, generator: torch.Generator) -> Learner:
    """Network plus learning rule of a run spec (on CPU; move ``learner.net`` afterwards)."""
    net = build_net(spec, info, generator)
    method, ep = spec["method"], spec["ep"]
    if method == "pep":
        from frernn.methods.pep import PrototypicalEP

        return PrototypicalEP(net, ep["T"], ep["K"], ep["nudge"])
    if method in ("bp", "fa"):
        return Backprop(net, feedback_alignment=method == "fa")
    if method == "bp_straight_through":
        return Backprop(net, straight_through=True)
    if spec["model"]["kind"] == "conv":
        from frernn.methods.ep_conv import ConvEP

        if ep["nudge_rule"] != "recompute":
            raise FrernnError("invalid run spec: ep.nudge_rule: the conv net uses recompute")
        return ConvEP(net, ep["T"], ep["K"], ep["nudge"])
    return LayeredEP(net, ep["T"], ep["K"], ep["nudge"], ep["nudge_rule"])
