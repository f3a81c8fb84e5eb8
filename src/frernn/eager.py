"""torch.optim without its compiler stack: torch wraps optimiser methods so that their first
call imports torch._dynamo (and sympy, several seconds per job) only to do nothing outside
``torch.compile``. frernn never compiles, so it calls the methods beneath those wrappers."""

from __future__ import annotations

import torch

DYNAMO_WRAPPED = ("add_param_group", "zero_grad", "state_dict", "load_state_dict")


def keep_optimizers_eager() -> None:
    """Mark the dynamo-disabling wrappers of the optimiser's bookkeeping methods as already
    resolved (to the method itself), so calling them imports nothing."""
    for name in DYNAMO_WRAPPED:
        method = getattr(getattr(torch.optim.Optimizer, name), "__wrapped__", None)
        if method is not None and getattr(method, "__dynamo_disable", None) is None:
            setattr(method, "__dynamo_disable", method)


def _undecorated_step(optimizer: torch.optim.Optimizer):
    """The optimiser's own ``step`` beneath torch's profiling and grad-mode wrappers, or None
    when this torch wraps it differently."""
    profiled = getattr(type(optimizer).step, "__wrapped__", None)
    step = getattr(profiled, "__wrapped__", None)
    if step is None or getattr(step, "__name__", "") != "step":
        return None
    return step


def eager_step(optimizer: torch.optim.Optimizer) -> None:
    """``optimizer.step()`` as torch runs it outside compilation (no grad, then the update),
    without the wrapper that imports torch._dynamo; optimiser hooks are not run."""
    step = _undecorated_step(optimizer)
    if step is None or optimizer.defaults.get("differentiable"):
        optimizer.step()
        return
    with torch.no_grad():
        step(optimizer)
    optimizer._opt_called = True  # what the LR scheduler's step counter records
