"""Dynamics diagnostics of the free phase: spectral radius, Lyapunov exponents,
convergence time and the trajectory of one sample (Figs. 2 and 5)."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor

from frernn.errors import FrernnError
from frernn.models.layered import LayeredFRERNN


def _inputs(net: LayeredFRERNN, x: Tensor) -> Tensor:
    """The batch flattened to (m, features) on the net's device and dtype."""
    return x.reshape(x.shape[0], -1).to(net.w_in)


def _flat(state: Tensor) -> Tensor:
    """Stacked states (L, m, n) as rows (m, L*n), layer-major like the dense matrix."""
    return state.transpose(0, 1).reshape(state.shape[1], -1)


def _free_states(net: LayeredFRERNN, x: Tensor, steps: int) -> Iterator[Tensor]:
    """The free-phase states s_1 .. s_steps from s_0 = 0, each (L, m, n), by the engine's relax."""
    base, stack = net.input_drive(x), net.recurrent_stack()
    state = net.zero_state(x.shape[0])
    for _ in range(steps):
        state = net.relax(state, base, stack, 1)
        yield state


@torch.no_grad()
def spectral_radius(net: LayeredFRERNN) -> float:
    """Max |eigenvalue| of the scaled hidden-to-hidden matrix (computed in float64 on the CPU)."""
    dense = net.dense_recurrent_matrix().to("cpu", torch.float64)
    return torch.linalg.eigvals(dense).abs().max().item()


@torch.no_grad()
def lyapunov(
    net: LayeredFRERNN, x: Tensor, T: int, horizon: int, generator: torch.Generator
) -> tuple[float, float]:
    """(FTMLE, MLE) by Benettin's method along the free trajectory of each sample from s = 0.

    delta_0 ~ N(0, I) normalised per sample, drawn as one (m, L*n) tensor from ``generator``;
    step t: delta <- (delta M) * (1 - s_t^2), record log||delta||, renormalise. FTMLE is the mean
    over steps 1..T, MLE over steps horizon//2 + 1 .. horizon; both averaged over samples. A
    fully saturated sample (delta exactly 0) is recorded at log of the dtype's smallest normal.
    """
    if not 1 <= T <= horizon or horizon < 2:
        raise FrernnError(
            f"lyapunov needs 1 <= T <= horizon and horizon >= 2, not T={T}, horizon={horizon}"
        )
    x = _inputs(net, x)
    dense = net.dense_recurrent_matrix()
    delta = torch.randn(
        x.shape[0], dense.shape[0], generator=generator, device=generator.device, dtype=dense.dtype
    ).to(dense.device)
    delta /= delta.norm(dim=1, keepdim=True)
    tiny = torch.finfo(dense.dtype).tiny
    logs = dense.new_empty(horizon, x.shape[0])
    for t, state in enumerate(_free_states(net, x, horizon)):
        s = _flat(state)
        delta = (delta @ dense).mul_(1 - s * s)
        norm = delta.norm(dim=1, keepdim=True).clamp_(min=tiny)
        logs[t] = norm.log().squeeze(1)
        delta /= norm
    return logs[:T].mean().item(), logs[horizon // 2 :].mean().item()


@torch.no_grad()
def convergence(
    net: LayeredFRERNN, x: Tensor, max_steps: int, tol: float = 1e-6, patience: int = 3
) -> tuple[float, float]:
    """(mean convergence time over converged samples, fraction converged) of the free phase.

    A sample's time is the step t at which ||s_k - s_{k-1}|| < tol (norm over all L*n units,
    s_0 = 0) has held for the ``patience`` consecutive steps k = t-patience+1 .. t, t <= max_steps.
    The mean is NaN when no sample converged.
    """
    x = _inputs(net, x)
    m = x.shape[0]
    run = torch.zeros(m, dtype=torch.long, device=x.device)
    time = torch.full((m,), -1, dtype=torch.long, device=x.device)
    previous = net.zero_state(m)
    for t, state in enumerate(_free_states(net, x, max_steps), start=1):
        below = (state - previous).square().sum(dim=(0, 2)).sqrt() < tol
        run = (run + 1) * below
        time = torch.where((run >= patience) & (time < 0), t, time)
        previous = state
        if bool((time >= 0).all()):
            break
    done = time >= 0
    mean_time = time[done].double().mean().item() if bool(done.any()) else math.nan
    return mean_time, done.double().mean().item()


def diagnose(
    net: LayeredFRERNN, x: Tensor, T: int, horizon: int, generator: torch.Generator
) -> dict[str, float | int | None]:
    """SR, FTMLE, MLE and convergence (over ``horizon`` steps) of a batch, JSON-ready.

    ``conv_time`` is None when no sample converged.
    """
    ftmle, mle = lyapunov(net, x, T, horizon, generator)
    conv_time, conv_frac = convergence(net, x, horizon)
    return {
        "sr": spectral_radius(net),
        "ftmle": ftmle,
        "mle": mle,
        "conv_time": None if math.isnan(conv_time) else conv_time,
        "conv_frac": conv_frac,
        "samples": int(x.shape[0]),
    }


@torch.no_grad()
def trajectory(net: LayeredFRERNN, x_one: Tensor, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Free phase of one sample: states s_1..s_steps (steps, L*n) and changes s_t - s_{t-1}."""
    x = _inputs(net, x_one.reshape(1, -1))
    states = torch.cat([_flat(s) for s in _free_states(net, x, steps)])
    changes = torch.diff(states, dim=0, prepend=torch.zeros_like(states[:1]))
    return states.cpu().numpy(), changes.cpu().numpy()
