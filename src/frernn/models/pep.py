"""P-EP: the discrete-time "prototypical" EP nets of Ernoult et al. (2019), fc and conv.

Every layer but the input is a dynamic state, the 10-unit output included; states start at 0
and are updated synchronously, s <- rho(dPhi/ds), with tied weights and one bias per layer.
``relax`` runs the free phase (``beta = 0``) or the nudged one, where only the output is pulled
towards the one-hot target: s_out <- rho(.) + beta (y - s_out).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.grad import conv2d_weight

from frernn.errors import FrernnError
from frernn.models.conv import _add_unpooled, _default_init, _maxpool, rho

SIGMOID_GAIN = 4.0  # rho(h) = sigmoid(4 (h - 1/2)) of the fully connected P-EP nets
CONV_KERNEL = 5


class PEPNet(nn.Module):
    """Fully connected P-EP net: input -> L hidden layers of ``width`` -> ``n_classes`` outputs.

    ``layers[l]`` is the nn.Linear from layer l to l+1 (its bias belongs to layer l+1); the
    hidden states are one ``(L, m, n)`` tensor, so a relaxation step is a fixed handful of
    batched matmuls whatever the depth.
    """

    def __init__(
        self,
        in_features: int,
        depth: int,
        width: int,
        n_classes: int,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        sizes = [in_features, *[width] * depth, n_classes]
        self.depth, self.width, self.n_classes = depth, width, n_classes
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes, sizes[1:], strict=False))
        for layer in self.layers:
            _default_init(layer.weight, layer.bias, generator)

    def layer_parameters(self) -> list[list[Tensor]]:
        """One group per layer, input -> output: [W, b] of each nn.Linear."""
        return [[layer.weight, layer.bias] for layer in self.layers]

    def zero_state(self, batch: int) -> tuple[Tensor, Tensor]:
        """(hidden (L, m, n), output (m, c)), all zero."""
        w = self.layers[0].weight
        return w.new_zeros(self.depth, batch, self.width), w.new_zeros(batch, self.n_classes)

    def prepare(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """(base, hidden stack, its transpose, W_out, b_out) for one batch, pre-scaled by the
        gain so that rho is a plain sigmoid of the drive (base: 4 (x W_in^T + b) - 2 per layer).
        """
        g, first, out = SIGMOID_GAIN, self.layers[0], self.layers[-1]
        hidden = list(self.layers[1:-1])
        drive_in = (x.flatten(1) @ first.weight.T + first.bias)[None]
        biases = [layer.bias.expand(x.shape[0], -1) for layer in hidden]
        base = torch.cat([drive_in, *(b[None] for b in biases)]) * g - g / 2
        if hidden:
            stack = torch.stack([layer.weight for layer in hidden]) * g
        else:
            stack = base.new_zeros(0, self.width, self.width)
        return base, stack, stack.transpose(1, 2), out.weight * g, out.bias * g - g / 2

    def relax(
        self,
        prepared: tuple[Tensor, Tensor, Tensor, Tensor, Tensor],
        state: tuple[Tensor, Tensor],
        steps: int,
        target: Tensor | None = None,
        beta: float = 0.0,
    ) -> tuple[Tensor, Tensor]:
        """``steps`` synchronous updates from ``state`` (left intact); nudged when ``target``.

        Differentiable when run under autograd (BPTT through the relaxation).
        """
        base, stack, stack_t, w_out, b_out = prepared
        hidden, out = state
        for _ in range(steps):
            drive = base.clone()
            if self.depth > 1:
                drive[1:].baddbmm_(hidden[:-1], stack_t)
                drive[:-1].baddbmm_(hidden[1:], stack)
            drive[-1].addmm_(out, w_out)
            new_out = torch.addmm(b_out, hidden[-1], w_out.T).sigmoid_()
            if target is not None:
                new_out = new_out + beta * (target - out)
            hidden, out = drive.sigmoid_(), new_out
        return hidden, out

    def free_phase(self, x: Tensor, steps: int) -> tuple[Tensor, Tensor]:
        """Free relaxation of ``steps`` steps from zero."""
        return self.relax(self.prepare(x), self.zero_state(x.shape[0]), steps)

    def contrastive(
        self,
        x: Tensor,
        prepared: tuple[Tensor, ...],
        free: tuple[Tensor, Tensor],
        nudged: tuple[Tensor, Tensor],
        scale: float,
    ) -> list[Tensor]:
        """scale * (dPhi/dtheta at the nudged state - at the free state) for every parameter of
        ``layer_parameters``, in order (Phi = sum_l s_{l+1} . (W_l s_l + b_l), s_0 = x)."""
        (h0, o0), (h1, o1) = free, nudged
        dh = h1 - h0
        grads = [scale * (dh[0].T @ x.flatten(1)), scale * dh[0].sum(0)]
        if self.depth > 1:
            pair = torch.bmm(h1[1:].transpose(1, 2), h1[:-1])
            pair.baddbmm_(h0[1:].transpose(1, 2), h0[:-1], alpha=-1).mul_(scale)
            for k in range(self.depth - 1):
                grads += [pair[k], scale * dh[k + 1].sum(0)]
        w_out = o1.T @ h1[-1] - o0.T @ h0[-1]
        return [*grads, scale * w_out, scale * (o1 - o0).sum(0)]


class ConvPEPNet(nn.Module):
    """Conv P-EP net: 5x5 unpadded convs, each max-pooled before the hard sigmoid, FC to outputs.

    State l is the pooled map rho(pool(conv_l(s_{l-1})) + feedback): conv l+1 feeds back into
    it through its transpose after unpooling s_{l+1} with the indices of the current step's pool.
    """

    def __init__(
        self,
        in_shape: tuple[int, int, int],
        channels: list[int],
        n_classes: int,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        c, h, w = in_shape
        self.in_shape, self.shapes, self.conv_sizes = tuple(in_shape), [], []
        convs = []
        for out in channels:
            h, w = h - CONV_KERNEL + 1, w - CONV_KERNEL + 1
            if min(h, w) < 2:
                raise FrernnError(
                    f"model.channels {list(channels)}: too many conv layers for input {in_shape}"
                )
            convs.append(nn.Conv2d(c, out, CONV_KERNEL))
            self.conv_sizes.append((h, w))
            c, h, w = out, h // 2, w // 2
            self.shapes.append((c, h, w))
        self.convs = nn.ModuleList(convs)
        self.fc = nn.Linear(math.prod(self.shapes[-1]), n_classes)
        for layer in [*self.convs, self.fc]:
            _default_init(layer.weight, layer.bias, generator)

    def layer_parameters(self) -> list[list[Tensor]]:
        """One group per layer, input -> output: [w, b] of each conv, then of the fc layer."""
        return [[layer.weight, layer.bias] for layer in [*self.convs, self.fc]]

    def zero_state(self, batch: int) -> list[Tensor]:
        """One zero map per conv layer, then the (m, classes) output."""
        w = self.fc.weight
        maps = [w.new_zeros(batch, *shape) for shape in self.shapes]
        return [*maps, w.new_zeros(batch, self.fc.out_features)]

    def prepare(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(pool(conv_1(x)), its indices): constant during both phases."""
        return _maxpool(self.convs[0](x))

    def pools(self, maps: list[Tensor]) -> list[tuple[Tensor, Tensor]]:
        """(pool(conv_{l+1}(s_l)), indices) for every conv above the first."""
        return [_maxpool(conv(s)) for conv, s in zip(self.convs[1:], maps, strict=False)]

    def unpool(self, values: Tensor, indices: Tensor, layer: int) -> Tensor:
        """``values`` placed at ``indices`` on the pre-pool grid of conv ``layer`` (0-based)."""
        grid = values.new_zeros(*values.shape[:2], *self.conv_sizes[layer])
        _add_unpooled(grid, indices, values, 1.0)
        return grid

    def relax(
        self,
        prepared: tuple[Tensor, Tensor],
        state: list[Tensor],
        steps: int,
        target: Tensor | None = None,
        beta: float = 0.0,
    ) -> list[Tensor]:
        """``steps`` synchronous updates from ``state`` (left intact); nudged when ``target``.

        Differentiable when run under autograd (BPTT through the relaxation).
        """
        first = prepared[0]
        for _ in range(steps):
            *maps, out = state
            pools = self.pools(maps)
            drives = [first, *(p for p, _ in pools)]
            for k, (conv, (_, idx)) in enumerate(zip(self.convs[1:], pools, strict=True)):
                unpooled = self.unpool(maps[k + 1], idx, k + 1)
                drives[k] = drives[k] + F.conv_transpose2d(unpooled, conv.weight)
            drives[-1] = drives[-1] + (out @ self.fc.weight).view_as(maps[-1])
            new_out = rho(self.fc(maps[-1].flatten(1)))
            if target is not None:
                new_out = new_out + beta * (target - out)
            state = [*(rho(d) for d in drives), new_out]
        return state

    def free_phase(self, x: Tensor, steps: int) -> list[Tensor]:
        """Free relaxation of ``steps`` steps from zero."""
        return self.relax(self.prepare(x), self.zero_state(x.shape[0]), steps)

    def contrastive(
        self,
        x: Tensor,
        prepared: tuple[Tensor, Tensor],
        free: list[Tensor],
        nudged: list[Tensor],
        scale: float,
    ) -> list[Tensor]:
        """scale * (dPhi/dtheta at the nudged state - at the free state) for every parameter of
        ``layer_parameters``, in order (Phi = sum_l s_l . pool(conv_l(s_{l-1})) + s_out . fc(s_L));
        each phase unpools with the indices of its own state."""
        d_first = self.unpool(nudged[0] - free[0], prepared[1], 0)
        conv0 = self.convs[0]
        grads = [scale * conv2d_weight(x, conv0.weight.shape, d_first)]
        grads.append(scale * (nudged[0] - free[0]).sum((0, 2, 3)))
        for k, conv in enumerate(self.convs[1:], start=1):
            weight = torch.zeros_like(conv.weight)
            for state, sign in ((nudged, 1.0), (free, -1.0)):
                idx = _maxpool(conv(state[k - 1]))[1]
                grid = self.unpool(state[k], idx, k)
                weight += sign * conv2d_weight(state[k - 1], conv.weight.shape, grid)
            grads += [scale * weight, scale * (nudged[k] - free[k]).sum((0, 2, 3))]
        top1, top0 = nudged[-2].flatten(1), free[-2].flatten(1)
        fc_w = nudged[-1].T @ top1 - free[-1].T @ top0
        return [*grads, scale * fc_w, scale * (nudged[-1] - free[-1]).sum(0)]
