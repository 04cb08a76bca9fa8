"""Progress of a long phase (sampling, training, an evaluation stage), with its rate and ETA.

On a terminal it is a tqdm bar; anywhere else (a log file, CI, a pipe) a plain line once the
phase has run ``delay`` seconds, then every ``every`` seconds and one at the end, so that logs
stay readable.  Either way nothing is shown
for a phase that ends within ``delay`` seconds.
"""

from __future__ import annotations

import sys
import time


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return (
        f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"
    )


class Progress:
    """``total`` units of work named ``desc``; call :meth:`update` as they are done and
    :meth:`close` (or use it as a context manager) at the end."""

    def __init__(
        self,
        total: int,
        desc: str,
        *,
        unit: str = "step",
        initial: int = 0,
        enabled: bool = True,
        stream=None,
        delay: float = 5.0,
        every: float = 10.0,
    ):
        self.total, self.desc, self.unit = total, desc, unit
        self.initial = self.done = initial
        self.stream = stream if stream is not None else sys.stderr
        self.delay, self.every, self.enabled = delay, every, enabled
        self.start = self.last = time.perf_counter()
        self.printed = False
        self.bar = None
        if enabled and _isatty(self.stream):
            try:
                from tqdm.auto import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                self.bar = tqdm(
                    total=total,
                    initial=initial,
                    desc=desc,
                    unit=unit,
                    delay=delay,
                    dynamic_ncols=True,
                    file=self.stream,
                )

    def update(self, n: int = 1, **postfix) -> None:
        """``n`` more units done; ``postfix`` (e.g. loss=...) is shown beside the bar."""
        self.done += n
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix(postfix, refresh=False)
            return
        now = time.perf_counter()
        due = not self.printed or now - self.last >= self.every  # the first line at ``delay``
        if now - self.start >= self.delay and due:
            self.last = now
            self._line(now, postfix)

    def line(self, now: float | None = None) -> str:
        """'desc: done/total unit (p%), elapsed m:ss, ETA m:ss'."""
        now = time.perf_counter() if now is None else now
        elapsed = now - self.start
        pct = 100.0 * self.done / self.total if self.total else 100.0
        rate = (self.done - self.initial) / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        eta_text = _clock(eta) if eta == eta else "?"
        return (
            f"{self.desc}: {self.done}/{self.total} {self.unit}s ({pct:.0f}%), "
            f"{_clock(elapsed)} elapsed, ETA {eta_text}"
        )

    def _line(self, now: float, postfix: dict) -> None:
        extra = "".join(f", {k} {v}" for k, v in postfix.items())
        print(self.line(now) + extra, file=self.stream, flush=True)
        self.printed = True

    def close(self) -> None:
        """End the phase: close the bar, or print the last line if any line was printed."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif self.enabled and self.printed:
            self._line(time.perf_counter(), {})

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
