"""How the conv relaxation is timed: the method as described, or one of the original notebooks.

Pure Python (no torch), so the workflow can canonicalise run specs without importing torch.
"""

from __future__ import annotations

from dataclasses import astuple, dataclass, fields

from frernn.errors import FrernnError


@dataclass(frozen=True)
class Timing:
    """Which one-step lags of the original notebooks the conv relaxation reproduces.

    readout: free logits, loss, prediction, fc gradient and the pre-synaptic pools of the conv
        updates come from the state one step before the end of the free phase.
    nudge_logit: a nudged step's error uses the logits of the previous step's state.
    index: feedback and nudge are unpooled with the previous step's max-pool indices.
    feedback_bias: the feedback transposed convolutions carry a fixed (untrained) bias.
    """

    readout: bool = False
    nudge_logit: bool = False
    index: bool = False
    feedback_bias: bool = False

    @property
    def reads_previous(self) -> bool:
        """Whether the relaxation reads the state one step earlier (any lag but the bias)."""
        return self.readout or self.nudge_logit or self.index

    @classmethod
    def parse(cls, value: str | list[str]) -> Timing:
        """A preset name (``corrected``, ``notebook_table1_mnist``, ...) or a list of lag names."""
        if isinstance(value, str):
            if value not in TIMINGS:
                raise FrernnError(f"model.timing: {value!r} is not one of {sorted(TIMINGS)}")
            return TIMINGS[value]
        unknown = sorted(set(value) - set(LAGS))
        if unknown:
            raise FrernnError(f"model.timing: unknown lag {unknown[0]!r} (lags: {', '.join(LAGS)})")
        return cls(**{lag: lag in value for lag in LAGS})

    def spec_value(self) -> str | list[str]:
        """The canonical spec value: the preset's name where one matches, else the lag list."""
        name = next((n for n, t in TIMINGS.items() if t == self), None)
        return name or [lag for lag, on in zip(LAGS, astuple(self), strict=True) if on]


LAGS = tuple(f.name for f in fields(Timing))
CORRECTED = Timing()
TIMINGS = {
    "corrected": CORRECTED,
    "notebook_table1_mnist": Timing(readout=True, nudge_logit=True, feedback_bias=True),
    "notebook_table2_mnist": Timing(readout=True, nudge_logit=True, index=True),
    "notebook_table2_cifar10": Timing(readout=True, nudge_logit=True),
}
