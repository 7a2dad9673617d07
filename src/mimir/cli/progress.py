"""Progress output of the commands, in one place: a tqdm bar on a terminal, plain lines elsewhere.

Cluster jobs write stderr to a log file, where a bar's carriage-return redraws pile up (hundreds
per stage) and cursor codes garble the text. So a bar is drawn only when stderr is a terminal;
otherwise a command prints a line with done/total, rate and ETA at most every LOG_INTERVAL_S
seconds and only after another LOG_FRACTION of the total (both must hold, so a stage writes at
most about ten lines), and always a last line when the stage completes. `-q` shows nothing.
Library code only calls back; the commands build their progress here and never construct tqdm.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Mapping
from typing import Self, TextIO

#: A non-terminal stage writes a line at most this often (seconds) ...
LOG_INTERVAL_S = 30.0
#: ... and only after this fraction of its total since the previous line.
LOG_FRACTION = 0.1

Info = Mapping[str, str]


def is_terminal(stream: TextIO) -> bool:
    """Whether `stream` is an interactive terminal (a redirected, closed or fake stream is not)."""
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty is not None and isatty())
    except (ValueError, OSError):
        return False


def format_duration(seconds: float) -> str:
    """'42 s', '3 min 05 s', '2 h 05 min': readable in a log, no clock digits to decode."""
    whole = max(0, round(seconds))
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} min"


def format_rate(rate: float | None, unit: str) -> str:
    """Items per second, or seconds per item when slower than one per second (as tqdm shows)."""
    if rate is None or rate <= 0 or not math.isfinite(rate):
        return f"? {unit}/s"
    if rate >= 1:
        return f"{_three_digits(rate)} {unit}/s"
    return f"{_three_digits(1 / rate)} s/{unit}"


def _three_digits(value: float) -> str:
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def format_line(
    desc: str, done: int, total: int, unit: str, elapsed: float, rate: float | None, info: Info | None = None
) -> str:
    """One progress line: 'compress 120/300 (40 %), 2.10 exam/s, 57 s elapsed, ETA 1 min 26 s'."""
    parts = [f"{desc} {done}/{total}" + (f" ({100 * done // total} %)" if total > 0 else "")]
    parts.append(format_rate(rate, unit))
    if done >= total:
        parts.append(f"done in {format_duration(elapsed)}")
    else:
        eta = format_duration((total - done) / rate) if rate else "?"
        parts.append(f"{format_duration(elapsed)} elapsed, ETA {eta}")
    parts.extend(f"{key} {value}" for key, value in (info or {}).items())
    return ", ".join(parts)


class Progress:
    """One stage's progress: `show(done)` with the absolute count, or `advance()` by one item."""

    def __init__(self) -> None:
        self.done = 0

    def advance(self, count: int = 1) -> None:
        self.show(self.done + count)

    def show(self, done: int, info: Info | None = None) -> None:
        self.done = done

    def close(self) -> None:
        """Finish the stage (idempotent)."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Bar(Progress):
    """tqdm on a terminal, as the commands always drew it."""

    def __init__(self, desc: str, total: int, unit: str, stream: TextIO, position: int | None, leave: bool) -> None:
        from tqdm import tqdm

        super().__init__()
        self._bar = tqdm(total=total, desc=desc, unit=unit, file=stream, position=position, leave=leave)

    def show(self, done: int, info: Info | None = None) -> None:
        super().show(done)
        if info is not None:
            self._bar.set_postfix(dict(info), refresh=False)
        self._bar.update(done - self._bar.n)

    def close(self) -> None:
        self._bar.close()


class LogLines(Progress):
    """Throttled plain lines for a log file; `clock` is injectable so tests need no sleeping."""

    def __init__(
        self, desc: str, total: int, unit: str, stream: TextIO, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self.desc, self.total, self.unit = desc, total, unit
        self._stream, self._clock = stream, clock
        self._started = self._last_time = clock()
        self._last_done: int | None = None
        self._first: tuple[float, int] | None = None
        self._info: Info | None = None
        self._step = max(1, math.ceil(total * LOG_FRACTION))

    def rate(self, now: float) -> float | None:
        """Items per second since the first report: a resumed stage starts counting at its own
        first item (a run resumed at iteration 5000 is not 5000 iterations in its first second)."""
        if self._first is None:
            return None
        first_time, first_done = self._first
        if self.done > first_done and now > first_time:
            return (self.done - first_done) / (now - first_time)
        if self.done >= self.total and self.done and now > self._started:  # done at its one report
            return self.done / (now - self._started)
        return None

    def show(self, done: int, info: Info | None = None) -> None:
        super().show(done)
        if info is not None:
            self._info = info
        now = self._clock()
        if self._first is None:
            self._first = (now, done)
        previous = 0 if self._last_done is None else self._last_done
        complete = done >= self.total and self._last_done != done
        due = done - previous >= self._step and now - self._last_time >= LOG_INTERVAL_S
        if complete or due:
            self._write(now)

    def close(self) -> None:
        """A stage that stops short (failures, Ctrl-C) still ends with its count."""
        if self._first is not None and self._last_done != self.done:
            self._write(self._clock())

    def _write(self, now: float) -> None:
        line = format_line(self.desc, self.done, self.total, self.unit, now - self._started, self.rate(now), self._info)
        print(line, file=self._stream, flush=True)
        self._last_time, self._last_done = now, self.done


def start_progress(
    desc: str,
    total: int,
    unit: str,
    *,
    quiet: bool,
    position: int | None = None,
    leave: bool = True,
    stream: TextIO | None = None,
) -> Progress:
    """The progress of one stage: nothing with -q, a bar on a terminal, log lines otherwise."""
    stream = stream if stream is not None else sys.stderr
    if quiet:
        return Progress()
    if is_terminal(stream):
        return _Bar(desc, total, unit, stream, position, leave)
    return LogLines(desc, total, unit, stream)


class Stages:
    """Progress of named stages reported as (stage, done, total), as the library calls back.

    On a terminal one bar is drawn at a time (a new stage closes the others) unless the stages
    `overlap`, when each keeps its own line. Log lines need no such care: every stage writes its
    own throttled lines, and its last one when it completes or when `close` is called.
    """

    def __init__(
        self,
        unit: str,
        *,
        quiet: bool,
        overlap: bool = False,
        leave: bool = True,
        stream: TextIO | None = None,
        units: Mapping[str, str] | None = None,
    ) -> None:
        self.unit, self.quiet, self.overlap, self.leave = unit, quiet, overlap, leave
        self.units = dict(units or {})
        self._stream = stream if stream is not None else sys.stderr
        self._stages: dict[str, Progress] = {}

    def __call__(self, stage: str, done: int, total: int, info: Info | None = None) -> None:
        progress = self._stages.get(stage)
        if progress is None:
            drawn = not self.quiet and is_terminal(self._stream)
            if drawn and not self.overlap:
                self.close()
            position = len(self._stages) if self.overlap else None
            progress = self._stages[stage] = start_progress(
                stage, total, self.unit_of(stage), quiet=self.quiet, position=position, leave=self.leave, stream=self._stream
            )
        progress.show(done, info)

    def unit_of(self, stage: str) -> str:
        """The unit of a stage: that of the first `units` key the stage name starts with (a run of
        several stages counts subjects, exams and iterations), else the default."""
        return next((unit for prefix, unit in self.units.items() if stage.startswith(prefix)), self.unit)

    def close(self) -> None:
        for progress in self._stages.values():
            progress.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
