"""One-shot and gradual pruning schedules (Zhu & Gupta 2017).

s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt)) ** 3   for t in {t0, t0 + dt, ..., t0 + n*dt}
"""

from __future__ import annotations

from dataclasses import dataclass

from onnxprune.core.errors import OptionError


@dataclass(frozen=True)
class ScheduleStep:
    index: int  # 1-based pruning step
    t: int  # in the hook's units (training steps)
    sparsity: float


def cubic_sparsity(t: float, s_i: float, s_f: float, n: int, t0: float = 0, dt: float = 1) -> float:
    if t <= t0:
        return s_i
    if t >= t0 + n * dt:
        return s_f
    return s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt)) ** 3


def schedule(final: float, steps: int = 1, initial: float = 0.0, t0: int = 0, dt: int = 1) -> list[ScheduleStep]:
    """One-shot when steps == 1; else the cubic schedule's pruning events with sparsity > 0
    (the event at t0 prunes to s_i, so it is dropped when s_i == 0).

    Example::

        for st in schedule(0.8, steps=4):
            print(st.index, st.t, round(st.sparsity, 3))
    """
    if not 0 <= final < 1:
        raise OptionError(f"sparsity {final}: must be in [0, 1)")
    if not 0 <= initial <= final:
        raise OptionError(f"initial sparsity {initial}: must be in [0, final sparsity {final}]")
    if steps < 1 or dt < 1:
        raise OptionError(f"steps {steps} / delta-t {dt}: must be >= 1")
    if steps == 1:
        return [ScheduleStep(1, t0, final)]
    events = [(t0 + k * dt, cubic_sparsity(t0 + k * dt, initial, final, steps, t0, dt)) for k in range(steps + 1)]
    events = [(t, s) for t, s in events if s > 0] if initial == 0 else events
    return [ScheduleStep(i + 1, t, s) for i, (t, s) in enumerate(events)]
