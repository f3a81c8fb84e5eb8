"""The layered FRE-RNN engine: topologies, EP vs BP, nudge rules, FA."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from frernn.methods.backprop import Backprop
from frernn.methods.ep import LayeredEP
from frernn.models.graph import LayerGraph
from frernn.models.layered import LayeredFRERNN


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine similarity without torch's norm clamp (EP updates can be ~1e-11 in size)."""
    a, b = a.flatten().double(), b.flatten().double()
    return float(a @ b / (a.norm() * b.norm()))


def make_net(graph, width=16, feedback="symmetric", alpha=1.0, beta=0.1, seed=0, dtype=None):
    gen = torch.Generator().manual_seed(seed)
    net = LayeredFRERNN(20, 10, graph, width, feedback, alpha, beta, gen)
    return net.to(dtype) if dtype else net


def batch(m=32, seed=1, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(m, 20, generator=gen).to(dtype), torch.randint(0, 10, (m,), generator=gen)


def test_residual_edges_for_depth_10_and_20():
    chain10 = set(LayerGraph.chain(10).edges)
    skips10 = set(LayerGraph.residual(10).edges) - chain10
    assert skips10 == {(1, 4), (4, 1), (4, 7), (7, 4), (7, 10), (10, 7)}
    skips20 = set(LayerGraph.residual(20).edges) - set(LayerGraph.chain(20).edges)
    pairs = {(1, 4), (4, 7), (7, 10), (10, 13), (13, 16), (16, 19)}
    assert skips20 == pairs | {(j, i) for i, j in pairs}


def test_agt_extremes_and_seeded_draws():
    depth = 6
    gen = lambda s: torch.Generator().manual_seed(s)  # noqa: E731
    assert set(LayerGraph.agt(depth, 0.0, gen(0)).edges) == set(LayerGraph.chain(depth).edges)
    full = LayerGraph.agt(depth, 1.0, gen(0)).adjacency()
    assert full.sum() == depth * (depth - 1) and full.trace() == 0
    assert LayerGraph.agt(10, 0.2, gen(3)) == LayerGraph.agt(10, 0.2, gen(3))
    assert LayerGraph.agt(10, 0.2, gen(3)) != LayerGraph.agt(10, 0.2, gen(4))


def test_grouped_step_equals_dense_matrix_step():
    """One relaxation step through grouped matmuls equals tanh(x W0 + s M_dense)."""
    gen = torch.Generator().manual_seed(5)
    for graph in (LayerGraph.chain(4), LayerGraph.residual(10), LayerGraph.agt(7, 0.4, gen)):
        net = make_net(graph, feedback="asymmetric", alpha=0.7, beta=0.3, dtype=torch.float64)
        x, _ = batch(dtype=torch.float64)
        state = torch.rand(graph.depth, 32, 16, dtype=torch.float64, generator=gen) * 2 - 1
        base = net.input_drive(x)
        got = net.relax(state, base, net.recurrent_stack(), 1)
        flat = state.transpose(0, 1).reshape(32, -1)
        drive = flat @ net.dense_recurrent_matrix()
        drive[:, :16] += x @ net.w_in
        expected = torch.tanh(drive).reshape(32, graph.depth, 16).transpose(0, 1)
        torch.testing.assert_close(got, expected)


def test_ep_update_matches_bp_gradient_at_small_beta():
    """SPEC §2: cosine > 0.99 per weight, norm shrinking by ~beta per layer below the top."""
    beta = nudge = 1e-3
    net = make_net(LayerGraph.chain(3), width=32, beta=beta, dtype=torch.float64)
    x, y = batch(64, dtype=torch.float64)
    LayeredEP(net, T=100, K=100, nudge=nudge, rule="fixed").train_step(x, y)
    ep = {name: p.grad.clone() for name, p in net.named_parameters()}
    Backprop(net).train_step(x, y)
    bp = {name: p.grad for name, p in net.named_parameters()}
    # from the top: W_out (exact), W_23 (~nudge), W_12 (~nudge*beta), W_0 (~nudge*beta^2)
    order = ["w_out", "w_fwd.1", "w_fwd.0", "w_in"]
    expected_scale = [1.0, nudge, nudge * beta, nudge * beta**2]
    for name, scale in zip(order, expected_scale, strict=True):
        assert cosine(ep[name], bp[name]) > 0.99, name
        ratio = float(ep[name].norm() / bp[name].norm())
        assert ratio == pytest.approx(scale, rel=0.05), name


def nudge_drives(rule: str, K: int = 4):
    """The top layer's extra drive (base minus input) seen at each nudged step."""
    net = make_net(LayerGraph.chain(2), dtype=torch.float64)
    x, y = batch(dtype=torch.float64)
    learner = LayeredEP(net, T=30, K=K, nudge=0.5, rule=rule)
    free = net.free_phase(x, 30)
    logits = net.readout(free[-1])
    target = F.one_hot(y, 10).double()
    error = torch.softmax(logits, 1) - target
    hook = learner._nudge_hook(error, target)
    base = net.input_drive(x)
    seen, states = [], []

    def spy(k, state, b):
        hook(k, state, b)
        seen.append(b[-1].clone())
        states.append(state.clone())

    net.relax(free, base, net.recurrent_stack(), K, spy)
    first = -0.5 * error @ net.error_feedback()
    return net, target, seen, states, first


def test_fixed_nudge_is_constant():
    _, _, seen, _, first = nudge_drives("fixed")
    for drive in seen:
        torch.testing.assert_close(drive, first)


def test_accumulate_nudge_grows_linearly():
    _, _, seen, _, first = nudge_drives("accumulate")
    for k, drive in enumerate(seen, start=1):
        torch.testing.assert_close(drive, k * first)


def test_recompute_nudge_follows_current_state():
    net, target, seen, states, first = nudge_drives("recompute")
    torch.testing.assert_close(seen[0], first)
    for drive, state in zip(seen, states, strict=True):
        current = torch.softmax(net.readout(state[-1]), 1) - target
        torch.testing.assert_close(drive, -0.5 * current @ net.error_feedback())
    assert not torch.allclose(seen[-1], seen[0])


def test_accumulate_readout_uses_nudged_error():
    net = make_net(LayerGraph.residual(4), dtype=torch.float64)
    x, y = batch(dtype=torch.float64)
    learner = LayeredEP(net, T=20, K=5, nudge=0.5, rule="accumulate")
    learner.train_step(x, y)
    free = net.free_phase(x, 20)
    free_error = torch.softmax(net.readout(free[-1]), 1) - F.one_hot(y, 10).double()
    assert not torch.allclose(net.w_out.grad, free[-1].T @ free_error / len(y))


def test_feedback_alignment_uses_fixed_matrices():
    net = make_net(LayerGraph.chain(3), feedback="asymmetric")
    x, y = batch()
    Backprop(net, feedback_alignment=True).train_step(x, y)
    fa = {n: p.grad.clone() for n, p in net.named_parameters()}
    Backprop(net).train_step(x, y)
    bp = {n: p.grad for n, p in net.named_parameters()}
    torch.testing.assert_close(fa["w_out"], bp["w_out"])  # top weights see the true error
    assert not torch.allclose(fa["w_fwd.0"], bp["w_fwd.0"])
    # manual FA: delta_l = (delta_{l+1} B_{l+1}) * tanh'(h_l)
    s1 = torch.tanh(x @ net.w_in)
    s2 = torch.tanh(s1 @ net.w_fwd[0])
    s3 = torch.tanh(s2 @ net.w_fwd[1])
    e = (torch.softmax(s3 @ net.w_out, 1) - F.one_hot(y, 10).float()) / len(y)
    d3 = (e @ net.e_out_fixed) * (1 - s3**2)
    d2 = (d3 @ net.feedback_matrices()[1]) * (1 - s2**2)
    torch.testing.assert_close(fa["w_fwd.0"], s1.T @ d2, atol=1e-6, rtol=1e-4)


def test_symmetric_feedback_is_tied_to_forward_weights():
    net = make_net(LayerGraph.residual(7), feedback="symmetric")
    for (src, dst), matrix in zip(net.feedback_edges, net.feedback_matrices(), strict=True):
        k = net.forward_edges.index((dst, src))
        assert matrix.data_ptr() == net.w_fwd[k].data_ptr()


def test_layer_parameter_groups_follow_layers():
    net = make_net(LayerGraph.chain(3))
    groups = net.layer_parameters()
    assert [len(g) for g in groups] == [1, 1, 1, 1]
    assert groups[0][0] is net.w_in and groups[-1][0] is net.w_out
