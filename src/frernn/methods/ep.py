"""Equilibrium Propagation for the layered FRE-RNN (SPEC §2), with its three nudge rules."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from frernn.models.layered import LayeredFRERNN

NUDGE_RULES = ("fixed", "accumulate", "recompute")


class LayeredEP:
    """Free phase (T steps from zero), nudged phase (K steps), contrastive updates into .grad."""

    def __init__(self, net: LayeredFRERNN, T: int, K: int, nudge: float, rule: str) -> None:
        if rule not in NUDGE_RULES:
            raise ValueError(f"unknown nudge rule {rule!r}")
        self.net, self.T, self.K, self.nudge, self.rule = net, T, K, nudge, rule
        edges = net.forward_edges
        self._src = torch.tensor([i - 1 for i, _ in edges], dtype=torch.long)
        self._dst = torch.tensor([j - 1 for _, j in edges], dtype=torch.long)

    def parameter_groups(self) -> list[list[Tensor]]:
        return self.net.layer_parameters()

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        return self.net.readout(self.net.free_phase(x, self.T)[-1])

    @torch.no_grad()
    def train_step(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        net = self.net
        stack = net.recurrent_stack()
        base = net.input_drive(x)
        free = net.relax(net.zero_state(x.shape[0]), base, stack, self.T)
        logits = net.readout(free[-1])
        target = F.one_hot(y, logits.shape[1]).to(logits.dtype)
        error = torch.softmax(logits, dim=1) - target
        nudged = net.relax(free, base, stack, self.K, self._nudge_hook(error, target))
        if self.rule == "accumulate":
            readout_error = torch.softmax(net.readout(nudged[-1]), dim=1) - target
        else:
            readout_error = error
        self._write_grads(x, free, free - nudged, readout_error)
        return F.cross_entropy(logits, y), logits

    def _nudge_hook(self, error: Tensor, target: Tensor):
        """The per-step rewrite of the top layer's drive that implements the nudge rule."""
        e_out = self.net.error_feedback()
        first = -self.nudge * (error @ e_out)

        def fixed(k: int, state: Tensor, base: Tensor) -> None:
            if k == 1:
                base[-1] += first

        def accumulate(k: int, state: Tensor, base: Tensor) -> None:
            base[-1] += first

        plain_top: list[Tensor] = []

        def recompute(k: int, state: Tensor, base: Tensor) -> None:
            if k == 1:
                plain_top.append(base[-1].clone())
            current = torch.softmax(self.net.readout(state[-1]), dim=1) - target
            torch.add(plain_top[0], current @ e_out, alpha=-self.nudge, out=base[-1])

        return {"fixed": fixed, "accumulate": accumulate, "recompute": recompute}[self.rule]

    def _write_grads(self, x: Tensor, free: Tensor, diff: Tensor, readout_error: Tensor) -> None:
        """grad W_ij = s_i^T (s_j^free - s_j^nudged) / m, grad W_out = s_L^T e / m."""
        net, m = self.net, x.shape[0]
        net.w_in.grad = x.flatten(1).T @ diff[0] / m
        if len(net.w_fwd):
            src, dst = self._src.to(free.device), self._dst.to(free.device)
            grads = torch.bmm(free[src].transpose(1, 2), diff[dst]) / m
            for w, g in zip(net.w_fwd, grads, strict=True):
                w.grad = g
        net.w_out.grad = free[-1].T @ readout_error / m
