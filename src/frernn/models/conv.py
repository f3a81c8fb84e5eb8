"""Convolutional FRE-RNN (SPEC §3): conv layers relaxed with max-unpool feedback, fc readout."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.grad import conv2d_weight

from frernn.errors import FrernnError


def conv_geometry(in_shape: tuple[int, int, int]) -> tuple[int, int]:
    """(kernel, padding): 1-channel input: MNIST's 5×5 unpadded convs; else CIFAR's 3×3 padded."""
    return (5, 0) if in_shape[0] == 1 else (3, 1)


def rho(x: Tensor) -> Tensor:
    """The hard-sigmoid activation clamp(x, 0, 1)."""
    return x.clamp(0.0, 1.0)


def _default_init(weight: Tensor, bias: Tensor | None, generator: torch.Generator | None) -> None:
    """PyTorch's default layer init (kaiming-uniform a=√5, bias U(±1/√fan_in)), seeded."""
    with torch.no_grad():
        nn.init.kaiming_uniform_(weight, a=math.sqrt(5), generator=generator)
        if bias is not None:
            bound = 1.0 / math.sqrt(weight[0].numel())
            nn.init.uniform_(bias, -bound, bound, generator=generator)


class _FAConv(torch.autograd.Function):
    """conv2d whose backward sends the error to the input through a fixed feedback kernel."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor, feedback: Tensor, padding: int):
        ctx.save_for_backward(x, feedback)
        ctx.weight_shape, ctx.padding = weight.shape, padding
        return F.conv2d(x, weight, bias, padding=padding)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, feedback = ctx.saved_tensors
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = F.conv_transpose2d(grad, feedback, padding=ctx.padding)
        grad_w = conv2d_weight(x, ctx.weight_shape, grad, padding=ctx.padding)
        return grad_x, grad_w, grad.sum((0, 2, 3)), None, None


class _FALinear(torch.autograd.Function):
    """Linear layer whose backward sends the error to the input through a fixed feedback matrix."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor, feedback: Tensor):
        ctx.save_for_backward(x, feedback)
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, feedback = ctx.saved_tensors
        return grad @ feedback, grad.t() @ x, grad.sum(0), None


def fa_conv2d(x: Tensor, weight: Tensor, bias: Tensor, feedback: Tensor, padding: int) -> Tensor:
    """conv2d whose backward uses ``feedback`` instead of ``weight`` for the input gradient."""
    return _FAConv.apply(x, weight, bias, feedback, padding)


def fa_linear(x: Tensor, weight: Tensor, bias: Tensor, feedback: Tensor) -> Tensor:
    """Linear layer whose backward uses ``feedback`` instead of ``weight`` for the input grad."""
    return _FALinear.apply(x, weight, bias, feedback)


class ConvFRERNN(nn.Module):
    """Conv layers l=1..L with state x_l (pre-activations), p_l = maxpool(ρ(x_l)), logits fc(p_L).

    The fc readout keeps nn.Linear's default bias (SPEC §3 names PyTorch defaults, and the bias is
    outside the recurrence); it gets the exact CE gradient like the fc weight.
    """

    def __init__(
        self,
        in_shape: tuple[int, int, int],
        channels: list[int],
        n_classes: int,
        beta: float,
        alpha: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if not channels:
            raise FrernnError("model.channels: the conv net needs at least one conv layer")
        self.in_shape, self.alpha, self.beta = tuple(in_shape), float(alpha), float(beta)
        self.kernel, self.padding = conv_geometry(self.in_shape)
        c, h, w = self.in_shape
        convs = []
        for out in channels:
            h, w = h + 2 * self.padding - self.kernel + 1, w + 2 * self.padding - self.kernel + 1
            if min(h, w) < 2:
                raise FrernnError(
                    f"model.channels {list(channels)}: too many conv layers for input {in_shape}"
                )
            convs.append(nn.Conv2d(c, out, self.kernel, padding=self.padding))
            c, h, w = out, h // 2, w // 2
        self.convs = nn.ModuleList(convs)
        self.fc = nn.Linear(c * h * w, n_classes)
        layers = [*self.convs, self.fc]
        for layer in layers:
            _default_init(layer.weight, layer.bias, generator)
        for i, layer in enumerate(layers):
            feedback = torch.empty_like(layer.weight)
            _default_init(feedback, None, generator)
            self.register_buffer(f"feedback{i}", feedback)

    def layer_parameters(self) -> list[list[Tensor]]:
        """One parameter group per layer, input→output: [w, b] of each conv, then [w, b] of fc."""
        return [[layer.weight, layer.bias] for layer in [*self.convs, self.fc]]

    def feedback_weights(self) -> list[Tensor]:
        """The fixed random feedback tensors of feedback alignment (one per conv, then fc)."""
        return [getattr(self, f"feedback{i}") for i in range(len(self.convs) + 1)]

    def feedforward(self, x: Tensor, feedback_alignment: bool = False) -> Tensor:
        """Logits of the feed-forward twin (the relaxation at β=0); FA backward on request."""
        fb = self.feedback_weights()
        p = x
        for conv, b in zip(self.convs, fb, strict=False):
            if feedback_alignment:
                pre = fa_conv2d(p, conv.weight, conv.bias, b, self.padding)
            else:
                pre = conv(p)
            p = _maxpool(rho(self.alpha * pre))[0]
        p = p.flatten(1)
        if feedback_alignment:
            return fa_linear(p, self.fc.weight, self.fc.bias, fb[-1])
        return self.fc(p)

    def input_drive(self, x: Tensor) -> Tensor:
        """α·conv_1(image): constant during both phases, so computed once per batch."""
        return self.alpha * self.convs[0](x)

    def pooled(self, state: list[Tensor]) -> list[Tensor]:
        """p_l = maxpool(ρ(x_l)) for every layer."""
        return [_maxpool(rho(x))[0] for x in state]

    def readout(self, state: list[Tensor]) -> Tensor:
        """Logits o = fc(p_L) of a state."""
        return self.fc(_maxpool(rho(state[-1]))[0].flatten(1))

    def initial_state(self, batch: int) -> list[Tensor]:
        """Pre-activations of one feed-forward pass of a zero image, one copy per sample."""
        p = torch.zeros(1, *self.in_shape, dtype=self.fc.weight.dtype, device=self.fc.weight.device)
        state = []
        for conv in self.convs:
            x = self.alpha * conv(p)
            state.append(x.expand(batch, *x.shape[1:]).contiguous())
            p = _maxpool(rho(x))[0]
        return state

    def relax(
        self,
        drive: Tensor,
        state: list[Tensor],
        steps: int,
        target: Tensor | None = None,
        nudge: float = 0.0,
    ) -> list[Tensor]:
        """``steps`` synchronous updates from ``state`` (left intact); a one-hot ``target`` nudges
        the top layer by nudge·unpool((target − softmax(o))·W_fc), o recomputed every step."""
        buffers = (torch.empty_like(drive), torch.empty_like(drive))
        for t in range(steps):
            state = self._step(drive, state, buffers[t % 2], target, nudge)
        return state

    def _step(
        self,
        drive: Tensor,
        state: list[Tensor],
        buffer: Tensor,
        target: Tensor | None,
        nudge: float,
    ) -> list[Tensor]:
        """The state one step after ``state``; layer 1 (the largest) is written into ``buffer``."""
        acts = [rho(x) for x in state]
        pools = [_maxpool(a) for a in acts]
        new = [buffer.copy_(drive)]
        new += [
            conv(p).mul_(self.alpha) for conv, (p, _) in zip(self.convs[1:], pools, strict=False)
        ]
        for i, conv in enumerate(self.convs[1:]):
            feedback = F.conv_transpose2d(acts[i + 1], conv.weight, padding=self.padding)
            _add_unpooled(new[i], pools[i][1], feedback, self.beta)
        if target is not None:
            pooled, indices = pools[-1]
            error = target - self.fc(pooled.flatten(1)).softmax(1)
            _add_unpooled(new[-1], indices, (error @ self.fc.weight).view_as(pooled), nudge)
        return new


def _maxpool(a: Tensor) -> tuple[Tensor, Tensor]:
    """maxpool2 with argmax indices, pooled in channels-last layout (many times faster on CPU)."""
    pooled, indices = F.max_pool2d(
        a.contiguous(memory_format=torch.channels_last), 2, return_indices=True
    )
    return pooled.contiguous(), indices.contiguous()


def _add_unpooled(x: Tensor, indices: Tensor, values: Tensor, scale: float) -> None:
    """x += scale·max_unpool(values, indices), in place (indices address each (n, c) plane of x)."""
    n, c = x.shape[:2]
    x.view(n, c, -1).scatter_add_(2, indices.view(n, c, -1), values.view(n, c, -1) * scale)
