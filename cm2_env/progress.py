"""Progress of long commands, on stderr: rich bars on a terminal, plain periodic lines anywhere else.

:class:`Phases` reports the phases of a run (``build``, ``sft``, ``grpo``, ``rollouts`` ...): call it with
``(phase, done, total, info)``. On a TTY each phase is a live bar with its info (``reward 0.6523``); when stderr
is a file or a pipe (CI logs, ``nohup``, a notebook) each phase prints one line such as
``grpo: 7/14 (50%) reward 0.6523 in 123.4 s`` at every tenth of its work and at its end, so a log shows progress
without terminal control codes. ``note(text)`` prints a line above the bars (errors, results). ``enabled=False``
prints nothing. Every command's progress goes through it: training, rollouts, annotation, judge calibration and
benchmarks.

:func:`progress` is the one-phase form: ``with progress("rollouts", total) as advance: ... advance()``.
"""

from __future__ import annotations

import contextlib
import sys
import time
from typing import Any, Callable, Iterator


class Phases:
    """A reporter of a run's phases (see the module docstring); use it as a context manager."""

    def __init__(self, enabled: bool = True, console: Any = None):
        self.enabled = enabled
        self.live = enabled and sys.stderr.isatty()
        self._started: dict[str, float] = {}
        self._next_report: dict[str, int] = {}
        self._tasks: dict[str, Any] = {}
        self._bar = None
        if self.live:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._bar = Progress(TextColumn("{task.description:<12}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
                                 console=console or Console(stderr=True))

    def __enter__(self) -> "Phases":
        if self._bar is not None:
            self._bar.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._bar is not None:
            self._bar.stop()

    def note(self, text: str) -> None:
        """Print one line (an error, a result) above the bars, or as a plain line."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.console.print(text, markup=False, highlight=False)
        else:
            print(text, file=sys.stderr, flush=True)

    def __call__(self, phase: str, done: int, total: int, info: dict[str, Any] | None = None) -> None:
        if not self.enabled:
            return
        text = "  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                         for k, v in (info or {}).items() if v is not None)
        if self._bar is not None:
            if phase not in self._tasks:
                self._tasks[phase] = self._bar.add_task(phase, total=total, info="")
            self._bar.update(self._tasks[phase], completed=done, total=total, info=text)
            return
        now = time.monotonic()
        started = self._started.setdefault(phase, now)
        step = max(1, total // 10)
        if done >= self._next_report.get(phase, step) or done >= total:
            share = f" ({done / total:.0%})" if total else ""
            print(f"{phase}: {done}/{total}{share}{'  ' + text if text else ''} in {now - started:.1f} s",
                  file=sys.stderr, flush=True)
            self._next_report[phase] = (done // step + 1) * step


@contextlib.contextmanager
def progress(label: str, total: int, *, enabled: bool = True) -> Iterator[Callable[[int], None]]:
    """A one-phase reporter for ``total`` units of work; yields ``advance(n=1)``."""
    if not enabled or total <= 0:
        yield lambda n=1: None
        return
    done = 0
    with Phases() as phases:
        def advance(n: int = 1) -> None:
            nonlocal done
            done += n
            phases(label, done, total)

        yield advance
