"""One live progress line for a whole benchmark grid (issue 28).

``benchmark`` prints a line per finished run; in between, this line says how many runs are done,
running and left, the ETA from the runs' own rates, and each running run's step and last
evaluation, read from its worker's log (the plain progress lines of ``training.loop``). On a
terminal it is one line rewritten in place about once a second; in a log file (not a terminal)
it is an ordinary line every ``PLAIN_EVERY`` seconds, without control characters.
"""

from __future__ import annotations

import re
import shutil
import sys
import time
from dataclasses import dataclass

PLAIN_EVERY = 60.0
"""Seconds between progress lines in a log file."""
TTY_EVERY = 1.0
"""Seconds between rewrites of the live line on a terminal."""

# A plain progress line of training.loop.Progress: "[label] step 1200/6000 eval=-812.3".
_STEP = re.compile(r"\] step (\d+)/(\d+)(?: eval=(\S+))?")


@dataclass
class Running:
    """A run in progress, as the grid line shows it."""

    label: str
    steps: int
    """Its step budget."""
    started: float
    step: int = 0
    last_eval: str | None = None
    initial: int = 0
    """The step it resumed from (its latest checkpoint's), 0 for a fresh run."""

    def read_log(self, text: str) -> None:
        """Take the newest step and evaluation from the tail of the run's log."""
        for match in _STEP.finditer(text):
            self.step = int(match.group(1))
            if match.group(3) is not None:
                self.last_eval = match.group(3)

    def rate(self, now: float) -> float | None:
        """Env steps per second since the run's process started (start-up included): of the
        steps of this sitting only, so a resumed run is not credited with those it had done."""
        done = self.step - self.initial
        return done / (now - self.started) if done > 0 and now > self.started else None


def duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class GridProgress:
    """The grid's live line: ``due`` says when to refresh it, ``show`` shows it."""

    def __init__(self, total: int, workers: int, stream=None, tty: bool | None = None):
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty() if tty is None else tty
        self.total, self.workers = total, workers
        self.done = 0
        """Runs ended: those finished in earlier sittings (``run_grid`` counts them) and since."""
        self.finished_rates: list[float] = []
        self._shown = False
        self._last = 0.0 if self.tty else time.time()  # a log's first line after PLAIN_EVERY

    def finished(self, steps: int, wall_time_s: float | None) -> None:
        """A run of this sitting ended; a finished one's rate joins the ETA's."""
        self.done += 1
        if wall_time_s:
            self.finished_rates.append(steps / wall_time_s)

    def due(self) -> bool:
        return time.time() - self._last >= (TTY_EVERY if self.tty else PLAIN_EVERY)

    def line(self, running: list[Running], queued_steps: int, queued: int, now: float) -> str:
        rates = [r for r in (run.rate(now) for run in running) if r] + self.finished_rates
        remaining = queued_steps + sum(max(0, run.steps - run.step) for run in running)
        parallel = min(self.workers, len(running) + queued)
        eta = (f"ETA {duration(remaining / (sum(rates) / len(rates) * parallel))}"
               if rates and parallel else "ETA ?")
        runs = " | ".join(
            f"{run.label} {run.step}/{run.steps}"
            + (f" eval {run.last_eval}" if run.last_eval is not None else "")
            for run in running)
        return (f"grid: {self.done}/{self.total} done, {len(running)} running, {queued} queued, "
                f"{eta}" + (f" | {runs}" if runs else ""))

    def show(self, running: list[Running], queued_steps: int, queued: int) -> None:
        self._last = now = time.time()
        text = self.line(running, queued_steps, queued, now)
        if self.tty:
            width = shutil.get_terminal_size().columns - 1
            self.stream.write("\r" + text[:width] + "\x1b[K")
            self._shown = True
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def clear(self) -> None:
        """Take the live line off the terminal before another line is printed."""
        if self._shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._shown = False
