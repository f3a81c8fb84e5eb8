"""Dynamics diagnostics (SPEC §4): spectral radius, Benettin exponents, convergence, trajectory."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from frernn import dynamics
from frernn.errors import FrernnError
from frernn.models.graph import LayerGraph
from frernn.models.layered import LayeredFRERNN

N = 64


pytestmark = pytest.mark.usefixtures("one_thread")


def make_net(
    depth: int,
    beta: float,
    topology: str = "chain",
    feedback: str = "symmetric",
    alpha: float = 1.0,
    seed: int = 0,
) -> LayeredFRERNN:
    g = torch.Generator().manual_seed(seed)
    graph = LayerGraph.build(topology, depth, 0.2, g)
    return LayeredFRERNN(784, 10, graph, N, feedback, alpha, beta, g)


def images(m: int, seed: int = 1) -> torch.Tensor:
    """Image-like inputs in [0, 1]: blocky binary 28x28 pictures, ~40 % of pixels on."""
    coarse = torch.rand(m, 1, 7, 7, generator=torch.Generator().manual_seed(seed)) > 0.6
    return coarse.float().repeat_interleave(4, 2).repeat_interleave(4, 3)


def expected_matrix(net: LayeredFRERNN, alpha: float, beta: float) -> np.ndarray:
    """Scaled symmetric hidden-to-hidden matrix from the weights: alpha W_ij, beta W_ij^T."""
    big = np.zeros((net.depth * N, net.depth * N))
    for (i, j), w in zip(net.graph.forward_edges, net.w_fwd, strict=True):
        w = w.detach().double().numpy()
        big[(i - 1) * N : i * N, (j - 1) * N : j * N] = alpha * w
        big[(j - 1) * N : j * N, (i - 1) * N : i * N] = beta * w.T
    return big


@pytest.mark.parametrize("topology, depth", [("chain", 3), ("residual", 7)])
def test_spectral_radius_matches_numpy(topology, depth):
    alpha, beta = 0.7, 0.3
    net = make_net(depth, beta, topology, alpha=alpha)
    expected = np.abs(np.linalg.eigvals(expected_matrix(net, alpha, beta))).max()
    assert dynamics.spectral_radius(net) == pytest.approx(expected, rel=1e-5)
    assert dynamics.spectral_radius(make_net(depth, 2 * beta, topology, alpha=alpha)) > expected


def test_small_beta_converges_within_T():
    depth = 3
    time, frac = dynamics.convergence(make_net(depth, 0.01), images(200), max_steps=10 * depth)
    assert frac == 1.0
    assert time <= 10 * depth  # measured 13.5-14 steps


def test_convergence_follows_its_definition_on_trajectories():
    """Per sample, the reported step is the first t with the last three changes all below tol."""
    net, steps, tol = make_net(2, 1.0), 150, 1e-6
    x = images(12, seed=3)
    outcomes = []
    for row in x:
        _, changes = dynamics.trajectory(net, row, steps)
        below = np.linalg.norm(changes.astype(np.float64), axis=1) < tol
        hits = [t for t in range(3, steps + 1) if below[t - 3 : t].all()]
        time, frac = dynamics.convergence(net, row[None], steps, tol=tol)
        if hits:
            assert (time, frac) == (hits[0], 1.0)
        else:
            assert math.isnan(time) and frac == 0.0
        outcomes.append(bool(hits))
    assert any(outcomes) and not all(outcomes)  # beta = 1: a mix (measured ~70 % converge)


def test_ftmle_negative_at_small_beta_and_positive_at_large_beta():
    x, gen = images(200), torch.Generator().manual_seed(0)
    small, _ = dynamics.lyapunov(make_net(2, 0.01), x, 20, 40, gen)
    large, _ = dynamics.lyapunov(make_net(2, 4.0), x, 20, 40, gen)
    assert small < -1.5  # measured -1.9 to -2.0
    assert large > 0.03  # measured 0.07 to 0.16 over seeds and input kinds


@pytest.mark.parametrize("feedback", ["symmetric", "asymmetric"])
def test_mle_of_near_linear_net_is_log_spectral_radius(feedback):
    """Tiny input drive and SR 0.5 keep tanh' ~ 1: the exponent is the linear map's log SR."""
    net = make_net(3, 0.4, "residual" if feedback == "symmetric" else "chain", feedback)
    with torch.no_grad():
        net.w_in.mul_(1e-4)
        shrink = 0.5 / dynamics.spectral_radius(net)
        for w in net.w_fwd:
            w.mul_(shrink)
        net.b_fixed.mul_(shrink)
    assert dynamics.spectral_radius(net) == pytest.approx(0.5, rel=1e-5)
    _, mle = dynamics.lyapunov(net, images(50), 10, 600, torch.Generator().manual_seed(0))
    assert mle == pytest.approx(math.log(0.5), abs=1e-3)  # measured within 1e-5


def test_ftmle_matches_benettin_recursion_in_numpy():
    """float64 net: exponents equal a direct numpy run of the recursion from the same delta_0."""
    alpha, beta, T, horizon, m = 1.0, 0.5, 6, 10, 7
    net = make_net(3, beta).double()
    x = images(m).reshape(m, -1).double()
    big = expected_matrix(net, alpha, beta)
    delta = torch.randn(m, 3 * N, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    delta = (delta / delta.norm(dim=1, keepdim=True)).numpy()
    drive = np.zeros((m, 3 * N))
    drive[:, :N] = x.numpy() @ net.w_in.detach().numpy()
    s, logs = np.zeros((m, 3 * N)), []
    for _ in range(horizon):
        s = np.tanh(drive + s @ big)
        delta = (delta @ big) * (1 - s**2)
        norm = np.linalg.norm(delta, axis=1, keepdims=True)
        logs.append(np.log(norm[:, 0]))
        delta = delta / norm
    ftmle, mle = dynamics.lyapunov(net, x, T, horizon, torch.Generator().manual_seed(4))
    assert ftmle == pytest.approx(np.mean(logs[:T]), abs=1e-10)
    assert mle == pytest.approx(np.mean(logs[horizon // 2 :]), abs=1e-10)


def test_trajectory_shapes_and_changes():
    net, steps = make_net(2, 0.1), 25
    x = images(3)
    states, changes = dynamics.trajectory(net, x[1], steps)
    assert states.shape == changes.shape == (steps, 2 * N)
    np.testing.assert_array_equal(changes[0], states[0])
    np.testing.assert_allclose(changes[1:], np.diff(states, axis=0), atol=1e-7)
    final = net.free_phase(x[1:2], steps)[:, 0, :].reshape(-1).numpy()
    np.testing.assert_allclose(states[-1], final, atol=1e-6)
    assert np.abs(states[:, N:]).max() > 0  # the top layer is driven through the recurrence


def test_diagnose_is_json_ready_and_deterministic():
    net, x = make_net(2, 0.1), images(40)
    first = dynamics.diagnose(net, x, 20, 60, torch.Generator().manual_seed(7))
    again = dynamics.diagnose(net, x, 20, 60, torch.Generator().manual_seed(7))
    other = dynamics.diagnose(net, x, 20, 60, torch.Generator().manual_seed(8))
    assert set(first) == {"sr", "ftmle", "mle", "conv_time", "conv_frac", "samples"}
    assert json.loads(json.dumps(first, allow_nan=False)) == first == again
    assert first["ftmle"] != other["ftmle"]
    assert first["samples"] == 40 and first["conv_frac"] == 1.0


def test_diagnose_reports_no_convergence_as_null():
    result = dynamics.diagnose(
        make_net(2, 4.0, feedback="asymmetric"), images(20), 20, 60, torch.Generator()
    )
    assert result["conv_frac"] == 0.0 and result["conv_time"] is None
    json.dumps(result, allow_nan=False)


def test_lyapunov_rejects_T_beyond_horizon():
    with pytest.raises(FrernnError, match="T=50"):
        dynamics.lyapunov(make_net(2, 0.1), images(2), 50, 40, torch.Generator())
