"""R layered nets of one shape trained as one batched net (a pack)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from frernn.models.layered import EdgeLayout, LayeredComputation, LayeredFRERNN


class LayeredPack(LayeredComputation, nn.Module):
    """The members' weights stacked along a run axis: W_0 ``(R, in, n)``, forward edges
    ``(F, R, n, n)``, fixed feedback ``(B, R, n, n)``, W_out ``(R, n, c)``; states
    ``(L, R, m, n)``.

    Each member's parameters are re-pointed to its slice of the stacked tensors, so its own
    optimiser, checkpoint and diagnostics read and write the pack's values. Members may have
    different edges (AGT draws them per seed): the pack runs on the union of all edges, where
    a member's missing edge is a zero matrix whose gradient is given to no one.

    Training batches are ``(R, m, *sample)`` (one per member); evaluation batches
    ``(m, *sample)`` are shared by all members.
    """

    stacked_edges = True  # gradients of the forward edges come as one (F, R, n, n) tensor

    def __init__(self, members: list[LayeredFRERNN], sample_dims: int = 3) -> None:
        super().__init__()
        first = members[0]
        self.members, self.sample_dims = members, sample_dims
        self.depth, self.width, self.symmetric = first.depth, first.width, first.symmetric
        self.forward_edges = sorted(set().union(*(m.forward_edges for m in members)))
        self.feedback_edges = sorted(set().union(*(m.feedback_edges for m in members)))
        self.layout = EdgeLayout(self.forward_edges + self.feedback_edges)
        self.layout.to(first.w_in.device)
        fwd = {e: k for k, e in enumerate(self.forward_edges)}
        fb = {e: k for k, e in enumerate(self.feedback_edges)}
        new = first.w_in.new_zeros
        n, runs = self.width, len(members)
        w_fwd, b_fixed = new(len(fwd), runs, n, n), new(len(fb), runs, n, n)
        tie = torch.zeros(len(fb), runs, 1, 1, dtype=torch.bool, device=first.w_in.device)
        for r, member in enumerate(members):
            for edge, w in zip(member.forward_edges, member.w_fwd, strict=True):
                w_fwd[fwd[edge], r] = w.detach()
            fixed = iter(member.b_fixed)
            for edge, tied in zip(member.feedback_edges, member.tied, strict=True):
                if tied is None:
                    b_fixed[fb[edge], r] = next(fixed)
                else:
                    tie[fb[edge], r] = True
        self.w_in = nn.Parameter(torch.stack([m.w_in.detach() for m in members]))
        self.w_fwd = nn.Parameter(w_fwd)
        self.w_out = nn.Parameter(torch.stack([m.w_out.detach() for m in members]))
        twin = [fwd.get((dst, src), 0) for src, dst in self.feedback_edges]
        self.register_buffer("twin", torch.tensor(twin, dtype=torch.long, device=tie.device))
        self.register_buffer("tie", tie)
        self.register_buffer("b_fixed", b_fixed)
        self.register_buffer("e_out_fixed", torch.stack([m.e_out_fixed for m in members]))
        per_run = [[m.alpha for m in members], [m.beta for m in members]]
        alpha, beta = (torch.tensor(v, dtype=first.w_in.dtype, device=tie.device) for v in per_run)
        self.register_buffer("alpha", alpha)
        order = torch.tensor(self.layout.stack_order, dtype=torch.long, device=tie.device)
        self.register_buffer("order", order)
        self.register_buffer("beta", beta)
        self._repoint()

    def _repoint(self) -> None:
        """Make every member's parameters views of its slice of the stacked tensors."""
        w_in, w_fwd, w_out = (p.detach() for p in (self.w_in, self.w_fwd, self.w_out))
        index = {e: k for k, e in enumerate(self.forward_edges)}
        for r, member in enumerate(self.members):
            member.w_in.data = w_in[r]
            member.w_out.data = w_out[r]
            for edge, w in zip(member.forward_edges, member.w_fwd, strict=True):
                w.data = w_fwd[index[edge], r]

    @property
    def runs(self) -> int:
        return len(self.members)

    @property
    def alpha_factor(self) -> Tensor:
        return self.alpha.view(-1, 1, 1)

    def edge_weight(self, k: int) -> Tensor:
        return self.w_fwd[k]

    def learned(self) -> list[Tensor]:
        """The learned tensors: W_0, all forward edges, W_out."""
        return [self.w_in, self.w_fwd, self.w_out]

    def set_grads(self, grads: list[Tensor]) -> None:
        """Gradients of ``learned()`` into each member's ``.grad`` (views of ``grads``)."""
        g_in, g_fwd, g_out = grads
        index = {e: k for k, e in enumerate(self.forward_edges)}
        for r, member in enumerate(self.members):
            member.w_in.grad, member.w_out.grad = g_in[r], g_out[r]
            for edge, w in zip(member.forward_edges, member.w_fwd, strict=True):
                w.grad = g_fwd[index[edge], r]

    def shared(self, x: Tensor) -> bool:
        """Whether ``x`` is one batch for all members rather than one per member."""
        return x.dim() == self.sample_dims + 1

    def flat_input(self, x: Tensor) -> Tensor:
        """``(m, in)`` for a shared batch, ``(R, m, in)`` for per-member batches."""
        return x.flatten(1) if self.shared(x) else x.flatten(2)

    def first_layer(self, x: Tensor) -> Tensor:
        """The drive ``x W_0`` of layer 1 of every member, ``(R, m, n)``, differentiable; a
        shared batch is multiplied once by all members' W_0 side by side."""
        flat = self.flat_input(x)
        if not self.shared(x):
            return torch.bmm(flat, self.w_in)
        side_by_side = self.w_in.transpose(0, 1).reshape(flat.shape[1], -1)
        return (flat @ side_by_side).view(len(flat), self.runs, -1).transpose(0, 1)

    @torch.no_grad()
    def input_drive(self, x: Tensor) -> Tensor:
        """The constant drive into layer 1, as the (L, R, m, n) base of every step."""
        first = self.first_layer(x)
        base = first.new_zeros(self.depth, *first.shape)
        base[0] = first
        return base

    @torch.no_grad()
    def recurrent_stack(self) -> Tensor:
        """All scaled edge matrices (E, R, n, n) in layout order."""
        w = self.w_fwd
        feedback = torch.where(self.tie, w[self.twin].mT, self.b_fixed)
        mats = torch.cat([self.alpha.view(-1, 1, 1) * w, self.beta.view(-1, 1, 1) * feedback])
        return mats.index_select(0, self.order)

    def _alignment_matrices(self) -> list[Tensor]:
        """For each forward edge of the union, every member's fixed feedback matrix (zero for a
        member lacking the edge), ``(R, n, n)``."""
        index = {e: k for k, e in enumerate(self.forward_edges)}
        aligned = self.w_in.new_zeros(len(index), self.runs, self.width, self.width)
        for r, member in enumerate(self.members):
            matrices = member._alignment_matrices()
            for edge, matrix in zip(member.forward_edges, matrices, strict=True):
                aligned[index[edge], r] = matrix
        return list(aligned)
