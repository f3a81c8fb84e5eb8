"""The straightforward implementation of FRE-RNN EP that benchmarks/engine.py measures against.

Same algorithm as frernn's engine (SPEC §2, §3), written the plain way: layered nets keep all
states in one (m, L*n) matrix and multiply by one dense (L*n) x (L*n) hidden matrix, masked by
the alpha/beta edge pattern at every step; the input drive is computed again for the nudged
phase; the conv net unpools with max_unpool2d in NCHW layout. It reuses the engine's parameters.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.grad import conv2d_weight

from frernn.models.conv import ConvFRERNN
from frernn.models.layered import LayeredFRERNN


class DenseEP:
    """Dense-matrix EP for a LayeredFRERNN: the Learner protocol of frernn.methods."""

    def __init__(self, net: LayeredFRERNN, T: int, K: int, nudge: float, rule: str) -> None:
        self.net, self.T, self.K, self.nudge, self.rule = net, T, K, nudge, rule
        n, size = net.width, net.depth * net.width
        self.mask = torch.zeros(size, size, device=net.w_in.device, dtype=net.w_in.dtype)
        for (i, j), scale in [(e, net.alpha) for e in net.forward_edges] + [
            (e, net.beta) for e in net.feedback_edges
        ]:
            self.mask[(i - 1) * n : i * n, (j - 1) * n : j * n] = scale

    def parameter_groups(self) -> list[list[Tensor]]:
        return self.net.layer_parameters()

    def _block(self, matrix: Tensor, i: int, j: int) -> Tensor:
        n = self.net.width
        return matrix[(i - 1) * n : i * n, (j - 1) * n : j * n]

    def weights(self) -> Tensor:
        """The unscaled hidden matrix: W_ij in forward blocks, the feedback matrices in the rest."""
        net, size = self.net, self.net.depth * self.net.width
        full = torch.zeros(size, size, device=net.w_in.device, dtype=net.w_in.dtype)
        for (i, j), w in zip(net.forward_edges, net.w_fwd, strict=True):
            self._block(full, i, j).copy_(w)
        for (i, j), b in zip(net.feedback_edges, net.feedback_matrices(), strict=True):
            self._block(full, i, j).copy_(b)
        return full

    def phase(self, x: Tensor, s: Tensor, steps: int, full: Tensor, nudge=None) -> Tensor:
        """``steps`` updates s <- tanh(drive + s (full * mask)); ``nudge(k, s)`` adds to the top."""
        n = self.net.width
        drive = torch.zeros_like(s)
        drive[:, :n] = x.flatten(1) @ self.net.w_in
        for k in range(1, steps + 1):
            h = s @ (full * self.mask) + drive
            if nudge is not None:
                h[:, -n:] += nudge(k, s)
            s = torch.tanh(h)
        return s

    def readout(self, s: Tensor) -> Tensor:
        return s[:, -self.net.width :] @ self.net.w_out

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        zero = x.new_zeros(x.shape[0], self.mask.shape[0])
        return self.readout(self.phase(x, zero, self.T, self.weights()))

    @torch.no_grad()
    def train_step(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        net, m, full = self.net, x.shape[0], self.weights()
        free = self.phase(x, x.new_zeros(m, self.mask.shape[0]), self.T, full)
        logits = self.readout(free)
        target = F.one_hot(y, logits.shape[1]).to(logits.dtype)
        error = torch.softmax(logits, 1) - target
        e_out = net.error_feedback()

        def nudge(k: int, s: Tensor) -> Tensor:
            if self.rule == "fixed":
                return -self.nudge * (error @ e_out)
            if self.rule == "accumulate":
                return -self.nudge * k * (error @ e_out)
            return -self.nudge * ((torch.softmax(self.readout(s), 1) - target) @ e_out)

        nudged = self.phase(x, free, self.K, full, nudge)
        diff = free - nudged
        outer = free.T @ diff / m
        net.w_in.grad = x.flatten(1).T @ diff[:, : net.width] / m
        for (i, j), w in zip(net.forward_edges, net.w_fwd, strict=True):
            w.grad = self._block(outer, i, j).clone()
        readout_error = error
        if self.rule == "accumulate":
            readout_error = torch.softmax(self.readout(nudged), 1) - target
        net.w_out.grad = free[:, -net.width :].T @ readout_error / m
        return F.cross_entropy(logits, y), logits


class PlainConvEP:
    """Conv-net EP written plainly (NCHW pooling, max_unpool2d, input drive per phase)."""

    def __init__(self, net: ConvFRERNN, T: int, K: int, nudge: float) -> None:
        self.net, self.T, self.K, self.nudge = net, T, K, nudge

    def parameter_groups(self) -> list[list[Tensor]]:
        return self.net.layer_parameters()

    def _pool(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return F.max_pool2d(x.clamp(0, 1), 2, return_indices=True)

    def phase(self, image: Tensor, state: list[Tensor], steps: int, target=None) -> list[Tensor]:
        """``steps`` synchronous updates of SPEC §3; a one-hot ``target`` nudges the top layer."""
        net, pad = self.net, self.net.padding
        drive = net.alpha * net.convs[0](image)
        for _ in range(steps):
            pools = [self._pool(x) for x in state]
            new = [drive] + [
                net.alpha * conv(p) for conv, (p, _) in zip(net.convs[1:], pools, strict=False)
            ]
            for i, conv in enumerate(net.convs[1:]):
                back = F.conv_transpose2d(state[i + 1].clamp(0, 1), conv.weight, padding=pad)
                new[i] = new[i] + net.beta * self._unpool(back, pools[i][1], state[i])
            if target is not None:
                pooled, indices = pools[-1]
                error = target - net.fc(pooled.flatten(1)).softmax(1)
                top = (error @ net.fc.weight).view_as(pooled)
                new[-1] = new[-1] + self.nudge * self._unpool(top, indices, state[-1])
            state = new
        return state

    @staticmethod
    def _unpool(values: Tensor, indices: Tensor, like: Tensor) -> Tensor:
        return F.max_unpool2d(values, indices, 2, output_size=like.shape[-2:])

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        net = self.net
        return net.readout(self.phase(x, net.initial_state(len(x)), self.T))

    @torch.no_grad()
    def train_step(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        net, m = self.net, len(x)
        free = self.phase(x, net.initial_state(m), self.T)
        target = F.one_hot(y, net.fc.out_features).to(x.dtype)
        nudged = self.phase(x, free, self.K, target)
        pooled = [self._pool(s)[0] for s in free]
        for conv, before, s_free, s_nudged in zip(
            net.convs, [x, *pooled[:-1]], free, nudged, strict=True
        ):
            delta = (s_free.clamp(0, 1) - s_nudged.clamp(0, 1)) / m
            conv.weight.grad = conv2d_weight(before, conv.weight.shape, delta, padding=net.padding)
            conv.bias.grad = delta.sum((0, 2, 3))
        top = pooled[-1].flatten(1)
        logits = net.fc(top)
        error = (logits.softmax(1) - target) / m
        net.fc.weight.grad = error.T @ top
        net.fc.bias.grad = error.sum(0)
        return F.cross_entropy(logits, y), logits
