"""Progress of long work: a tqdm bar on a terminal, log lines otherwise; library code never prints.

Everything goes through the `onnxprune` logger. Passes and jobs iterate their long loops through
`progress(...)` (a bar on a TTY at INFO level, a DEBUG line per item) and log one INFO stage line
when a stage ends (`stage_line`). The CLI sets the level (`-q`: warnings, default: stage lines,
`-v`: every item) with `configure`; Python callers use `logging` as usual::

    import logging
    logging.basicConfig(level=logging.INFO)   # stage lines (and bars on a terminal) from onnxprune
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Callable, Iterable, Iterator, TypeVar

from tqdm import tqdm

log = logging.getLogger("onnxprune")

T = TypeVar("T")
HEARTBEAT_S = 30.0  # in a log (no bar), a long loop says how far it got this often


def bars_enabled() -> bool:
    """Bars are drawn on a terminal when stage lines are wanted (INFO) and stderr is a TTY."""
    return log.isEnabledFor(logging.INFO) and sys.stderr.isatty()


def progress(items: Iterable[T], desc: str, *, total: int | None = None, unit: str = "it",
             name: Callable[[T], str] | None = None, enabled: bool = True) -> Iterator[T]:
    """Yield `items`; on a TTY (INFO level) a transient bar `desc` advances per item; at DEBUG each
    item is logged as `desc: i/n NAME` (`name(item)`, default str) before it is worked on.

    >>> for w in progress(weights, "wanda step 1", unit="weight", name=lambda w: w.key): ...
    """
    items = list(items) if total is None and not hasattr(items, "__len__") else items
    n = total if total is not None else len(items)  # type: ignore[arg-type]
    drawn = enabled and n > 1 and bars_enabled()
    bar = tqdm(total=n, desc=desc, unit=unit, leave=False, file=sys.stderr, dynamic_ncols=True, disable=not drawn)
    debug = log.isEnabledFor(logging.DEBUG)
    heartbeat = enabled and not drawn and not debug and log.isEnabledFor(logging.INFO)  # a log: a line now and then
    start = last = time.perf_counter()
    try:
        for i, item in enumerate(items, 1):
            if debug:
                log.debug("%s: %d/%d %s", desc, i, n, (name or str)(item))
            yield item
            bar.update(1)
            if heartbeat and i < n and time.perf_counter() - last >= HEARTBEAT_S:
                last = time.perf_counter()
                log.info("%s: %d/%d %s done, %.0f s so far", desc, i, n, unit + "s" * (i > 1), last - start)
    finally:
        bar.close()


def stage_line(text: str, seconds: float | None = None, *, detail: bool = False) -> None:
    """Log the one INFO line of a finished stage: `text, 3.1 s` (`detail`: a stage inside a larger
    one, such as a pass of one sweep level, logged at DEBUG)."""
    log.log(logging.DEBUG if detail else logging.INFO, "%s%s", text, "" if seconds is None else f", {seconds:.1f} s")


class Timer:
    """`with Timer() as t: ...; t.seconds`: wall time of a stage."""

    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.start


class _TqdmHandler(logging.Handler):
    """Writes records between bar redraws (tqdm.write), so log lines do not tear a bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:
            self.handleError(record)


def configure(verbosity: int) -> None:
    """CLI logging: -1 quiet (warnings and errors), 0 stage lines, 1 every item. Idempotent."""
    level = logging.WARNING if verbosity < 0 else logging.INFO if verbosity == 0 else logging.DEBUG
    log.setLevel(level)
    if not any(isinstance(h, _TqdmHandler) for h in log.handlers):
        handler = _TqdmHandler()
        handler.setFormatter(logging.Formatter("onnxprune: %(message)s"))
        log.addHandler(handler)
        log.propagate = False
