"""Progress of long phases, written for a person watching (or reading a log later).

- On a terminal (stderr is a TTY), a step phase shows a tqdm bar with its rate and ETA.
- Otherwise (a log file, CI, a pipe) it writes a plain line every few seconds, never carriage
  returns: ``stage 1: 120/500 steps (24%), loss 0.0123, 5012 Gaussians, 0:31 elapsed, ETA 1:38``.
  The interval is 5 s, or ``$DREAMGS_PROGRESS_EVERY`` seconds (0: every update).
- Phases without steps (mesh extraction, unwrapping, baking) get a line when they start and one
  with the time they took (:func:`phase`).
- With ``enabled=False`` nothing at all is written.

Everything goes to stderr, so stdout keeps only a command's result.
"""

from __future__ import annotations

import math
import os
import sys
import time
from contextlib import contextmanager
from typing import Callable, Iterator

EVERY_ENV = "DREAMGS_PROGRESS_EVERY"
DEFAULT_EVERY_S = 5.0


def clock(seconds: float) -> str:
    """``m:ss`` (or ``h:mm:ss``) for a duration in seconds."""
    s = int(round(max(0.0, seconds))) if math.isfinite(seconds) else 0
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def took(seconds: float) -> str:
    """A short duration for phase lines: ``4.2 s`` under a minute, else ``m:ss``."""
    return f"{seconds:.1f} s" if seconds < 60 else clock(seconds)


def log_every() -> float:
    """Seconds between two plain progress lines ($DREAMGS_PROGRESS_EVERY, default 5)."""
    try:
        value = float(os.environ.get(EVERY_ENV, DEFAULT_EVERY_S))
    except ValueError:
        return DEFAULT_EVERY_S
    return value if value >= 0 and math.isfinite(value) else DEFAULT_EVERY_S


def is_terminal(stream=None) -> bool:
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # replaced or closed streams
        return False


def say(text: str, enabled: bool = True) -> None:
    """Write one line for the person watching (stderr; on a terminal above any open bar)."""
    if not enabled:
        return
    if is_terminal():
        from tqdm import tqdm

        tqdm.write(text, file=sys.stderr)
    else:
        print(text, file=sys.stderr, flush=True)


@contextmanager
def phase(name: str, detail: str = "", enabled: bool = True) -> Iterator[None]:
    """A line when phase ``name`` starts (with ``detail``, e.g. its size) and one with its duration
    when it ends."""
    say(f"{name} ({detail})..." if detail else f"{name}...", enabled)
    t0 = time.perf_counter()
    yield
    say(f"{name}: done in {took(time.perf_counter() - t0)}", enabled)


class Progress:
    """Progress of ``total`` units of work named ``desc`` (see the module docstring).

    ``update(n, info)`` adds ``n`` done units; ``info`` (e.g. ``"loss 0.0123, 5012 Gaussians"``)
    is shown after the count. ``weight(k)``: the relative cost of unit k, when units differ (stage-1
    steps grow with the render size), so that the ETA weighs the units still ahead. Use as a context
    manager or call :meth:`close`, which writes the final line in plain mode.
    """

    def __init__(self, desc: str, total: int, unit: str = "steps", initial: int = 0, enabled: bool = True,
                 weight: Callable[[int], float] | None = None):
        self.desc, self.total, self.unit = desc, int(total), unit
        self._cum = None  # cumulative weights: _cum[k] = weight of units 0..k-1
        if weight is not None:
            self._cum = [0.0]
            for k in range(self.total):
                self._cum.append(self._cum[-1] + max(0.0, float(weight(k))))
        self.n = self._n0 = int(initial)
        self.enabled = enabled
        self.info = ""
        self._t0 = self._last = time.perf_counter()
        self._every = log_every()
        self._bar = None
        self._closed = False
        if enabled and is_terminal():
            from tqdm import tqdm

            self._bar = tqdm(total=self.total, initial=self.n, desc=desc, unit=unit.rstrip("s") or unit,
                             dynamic_ncols=True, file=sys.stderr, leave=True)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close(ok=exc[0] is None)

    def elapsed(self) -> float:
        return time.perf_counter() - self._t0

    def eta(self) -> float | None:
        """Seconds left at the rate so far (None before the first unit is done)."""
        done = self.n - self._n0
        if done <= 0:
            return None
        if self._cum is not None and 0 <= self._n0 < self.n <= self.total:
            spent = self._cum[self.n] - self._cum[self._n0]
            if spent > 0:
                return (self._cum[self.total] - self._cum[self.n]) * self.elapsed() / spent
        return (self.total - self.n) * self.elapsed() / done

    def line(self, final: bool = False) -> str:
        pct = 100.0 * self.n / self.total if self.total else 100.0
        parts = [f"{self.desc}: {self.n}/{self.total} {self.unit} ({pct:.0f}%)"]
        if self.info:
            parts.append(self.info)
        if final:
            parts.append(f"done in {clock(self.elapsed())}")
        else:
            eta = self.eta()
            parts += [f"{clock(self.elapsed())} elapsed", f"ETA {clock(eta) if eta is not None else '?'}"]
        return ", ".join(parts)

    def update(self, n: int = 1, info: str | None = None) -> None:
        self.n += n
        if info is not None:
            self.info = info
        if not self.enabled:
            return
        if self._bar is not None:
            if info is not None:
                self._bar.set_postfix_str(info, refresh=False)
            self._bar.update(n)
            return
        now = time.perf_counter()
        if now - self._last >= self._every and self.n < self.total:
            self._last = now
            print(self.line(), file=sys.stderr, flush=True)

    def close(self, ok: bool = True) -> None:
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elif self.enabled and ok:
            print(self.line(final=True), file=sys.stderr, flush=True)
