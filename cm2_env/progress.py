"""Progress of long commands, on stderr: a rich bar on a terminal, plain periodic lines anywhere else.

``with progress("rollouts", total) as advance: ... advance()`` -- on a TTY a live bar; when stderr is a file or a
pipe (CI logs, ``nohup``, a notebook) one line such as ``rollouts: 40/156 (26%) in 12.3 s`` at every tenth of
the work (and at the end), so a log shows progress without terminal control codes. ``enabled=False`` prints
nothing.
"""

from __future__ import annotations

import contextlib
import sys
import time
from typing import Callable, Iterator


@contextlib.contextmanager
def progress(label: str, total: int, *, enabled: bool = True) -> Iterator[Callable[[int], None]]:
    """A progress reporter for ``total`` units of work (see the module docstring); yields ``advance(n=1)``."""
    if not enabled or total <= 0:
        yield lambda n=1: None
        return
    if sys.stderr.isatty():
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        bar = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                       console=Console(stderr=True), transient=False)
        bar.start()
        task = bar.add_task(label, total=total)
        try:
            yield lambda n=1: bar.advance(task, n)
        finally:
            bar.stop()
        return
    started = time.monotonic()
    step = max(1, total // 10)
    done = 0
    next_report = step

    def advance(n: int = 1) -> None:
        nonlocal done, next_report
        done += n
        if done >= next_report or done >= total:
            print(f"{label}: {done}/{total} ({done / total:.0%}) in {time.monotonic() - started:.1f} s",
                  file=sys.stderr, flush=True)
            next_report = (done // step + 1) * step

    yield advance
