"""Convolutional FRE-RNN: conv layers relaxed with max-unpool feedback, fc readout."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.grad import conv2d_weight

from frernn.errors import FrernnError
from frernn.models.timing import CORRECTED, Timing

Pool = tuple[Tensor, Tensor]  # max-pooled values and their argmax indices


def conv_geometry(in_shape: tuple[int, int, int]) -> tuple[int, int]:
    """(kernel, padding): 1-channel input: MNIST's 5×5 unpadded convs; else CIFAR's 3×3 padded."""
    return (5, 0) if in_shape[0] == 1 else (3, 1)


def rho(x: Tensor) -> Tensor:
    """The hard-sigmoid activation clamp(x, 0, 1)."""
    return x.clamp(0.0, 1.0)


class _StraightThroughClamp(torch.autograd.Function):
    """clamp(x, 0, 1) whose backward passes the gradient unchanged (derivative taken as 1)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        return rho(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return grad


class Relaxation(NamedTuple):
    """A state (pre-activations per layer) and the max-pools of the state one step earlier.

    ``previous`` is None at a start (no earlier step) and when the timing reads no earlier state.
    """

    state: list[Tensor]
    previous: list[Pool] | None = None


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

    The fc readout keeps nn.Linear's default bias (PyTorch defaults, as the method says; the bias is
    outside the recurrence); it gets the exact CE gradient like the fc weight. ``timing`` times the
    relaxation as described (the default) or with an original notebook's one-step lags.
    """

    def __init__(
        self,
        in_shape: tuple[int, int, int],
        channels: list[int],
        n_classes: int,
        beta: float,
        alpha: float = 1.0,
        generator: torch.Generator | None = None,
        timing: Timing = CORRECTED,
    ) -> None:
        super().__init__()
        self.timing = timing
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
        if timing.feedback_bias:
            for i, conv in enumerate(self.convs[1:]):
                self.register_buffer(f"feedback_bias{i}", _transpose_bias(conv.weight, generator))

    def layer_parameters(self) -> list[list[Tensor]]:
        """One parameter group per layer, input→output: [w, b] of each conv, then [w, b] of fc."""
        return [[layer.weight, layer.bias] for layer in [*self.convs, self.fc]]

    def feedback_bias(self, i: int) -> Tensor | None:
        """The fixed bias of the feedback from conv layer i+2 into layer i+1, None without one."""
        return getattr(self, f"feedback_bias{i}") if self.timing.feedback_bias else None

    def feedback_weights(self) -> list[Tensor]:
        """The fixed random feedback tensors of feedback alignment (one per conv, then fc)."""
        return [getattr(self, f"feedback{i}") for i in range(len(self.convs) + 1)]

    def feedforward(
        self, x: Tensor, feedback_alignment: bool = False, straight_through: bool = False
    ) -> Tensor:
        """Logits of the feed-forward twin (the relaxation at β=0); FA backward on request, or
        ``straight_through``: backward through the max-pool routing with dρ/dx taken as 1."""
        fb = self.feedback_weights()
        activation = _StraightThroughClamp.apply if straight_through else rho
        p = x
        for conv, b in zip(self.convs, fb, strict=False):
            if feedback_alignment:
                pre = fa_conv2d(p, conv.weight, conv.bias, b, self.padding)
            else:
                pre = conv(p)
            p = _maxpool(activation(self.alpha * pre))[0]
        p = p.flatten(1)
        if feedback_alignment:
            return fa_linear(p, self.fc.weight, self.fc.bias, fb[-1])
        return self.fc(p)

    def input_drive(self, x: Tensor) -> Tensor:
        """α·conv_1(image): constant during both phases, so computed once per batch."""
        return self.alpha * self.convs[0](x)

    def readout(self, state: list[Tensor]) -> Tensor:
        """Logits o = fc(p_L) of a state."""
        return self.fc(_maxpool(rho(state[-1]))[0].flatten(1))

    def output_pools(self, relaxed: Relaxation) -> list[Tensor]:
        """The pools p_l a free phase reports (logits, fc gradient, pre-synaptic pools): of its
        last state, or with the readout lag of the state one step earlier."""
        if self.timing.readout and relaxed.previous is not None:
            return [p for p, _ in relaxed.previous]
        return [_maxpool(rho(x))[0] for x in relaxed.state]

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
        start: Relaxation | list[Tensor],
        steps: int,
        target: Tensor | None = None,
        nudge: float = 0.0,
    ) -> Relaxation:
        """``steps`` synchronous updates from ``start`` (left intact; a plain list of
        pre-activations is a start without an earlier step); a one-hot ``target`` nudges the top
        layer by nudge·unpool((target − softmax(o))·W_fc), o recomputed every step."""
        state, previous = start if isinstance(start, Relaxation) else (start, None)
        buffers = (torch.empty_like(drive), torch.empty_like(drive))
        keep = self.timing.reads_previous  # else the earlier pools are freed at once
        for t in range(steps):
            state, pools = self._step(drive, state, previous, buffers[t % 2], target, nudge)
            previous = pools if keep else None
        return Relaxation(state, previous)

    def _step(
        self,
        drive: Tensor,
        state: list[Tensor],
        previous: list[Pool] | None,
        buffer: Tensor,
        target: Tensor | None,
        nudge: float,
    ) -> tuple[list[Tensor], list[Pool]]:
        """The state one step after ``state`` and the pools of ``state``; layer 1 (the largest)
        is written into ``buffer``. The timing's lags read the pools of ``previous`` (the step
        before ``state``; at a start, the start's own)."""
        acts = [rho(x) for x in state]
        pools = [_maxpool(a) for a in acts]
        earlier = previous or pools
        routes = earlier if self.timing.index else pools
        new = [buffer.copy_(drive)]
        new += [
            conv(p).mul_(self.alpha) for conv, (p, _) in zip(self.convs[1:], pools, strict=False)
        ]
        for i, conv in enumerate(self.convs[1:]):
            feedback = F.conv_transpose2d(
                acts[i + 1], conv.weight, self.feedback_bias(i), padding=self.padding
            )
            _add_unpooled(new[i], routes[i][1], feedback, self.beta)
        if target is not None:
            logits = self.fc((earlier if self.timing.nudge_logit else pools)[-1][0].flatten(1))
            error = (target - logits.softmax(1)) @ self.fc.weight
            _add_unpooled(new[-1], routes[-1][1], error.view_as(pools[-1][0]), nudge)
        return new, pools


def _transpose_bias(weight: Tensor, generator: torch.Generator | None) -> Tensor:
    """The default bias of the ConvTranspose2d with kernel ``weight``: U(±1/√(c_out·k·k))."""
    bias = torch.empty(weight.shape[1], dtype=weight.dtype)
    bound = 1.0 / math.sqrt(weight[0].numel())
    with torch.no_grad():
        return nn.init.uniform_(bias, -bound, bound, generator=generator)


def _maxpool(a: Tensor) -> Pool:
    """maxpool2 with argmax indices, pooled in channels-last layout (many times faster on CPU)."""
    pooled, indices = F.max_pool2d(
        a.contiguous(memory_format=torch.channels_last), 2, return_indices=True
    )
    return pooled.contiguous(), indices.contiguous()


def _add_unpooled(x: Tensor, indices: Tensor, values: Tensor, scale: float) -> None:
    """x += scale·max_unpool(values, indices), in place (indices address each (n, c) plane of x)."""
    n, c = x.shape[:2]
    x.view(n, c, -1).scatter_add_(2, indices.view(n, c, -1), values.view(n, c, -1) * scale)
