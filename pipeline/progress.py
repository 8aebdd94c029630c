"""Progress with an ETA for long commands: a bar on a terminal (rich), plain lines when the output is a file or a
pipe (a log, CI), at most one every `every_s` seconds plus the last one."""

from __future__ import annotations

import sys
import time


def eta_text(seconds: float | None) -> str:
    if seconds is None:
        return "eta ?"
    s = int(round(seconds))
    return f"eta {s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"eta {s // 60}m{s % 60:02d}s"


class Progress:
    """`with Progress(total, "packing") as p: ... p.advance()`. `bar=False` computes the ETA for lines the caller
    prints itself (the build's per-clip lines, which go through Prefect's logger)."""

    def __init__(self, total: int, what: str, unit: str = "", every_s: float = 10.0, bar: bool | None = None):
        self.total, self.what, self.unit, self.every_s = max(0, int(total)), what, unit, every_s
        self.done, self.t0, self.last_line = 0, time.monotonic(), 0.0
        self.bar = sys.stderr.isatty() if bar is None else bar
        self._rich = self._task = None

    def __enter__(self) -> Progress:
        if self.bar and self.total:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._rich = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                console=Console(stderr=True), transient=False,
            )  # fmt: skip
            self._rich.start()
            self._task = self._rich.add_task(self.what, total=self.total)
        return self

    def __exit__(self, *exc) -> None:
        if self._rich is not None:
            self._rich.stop()
        elif self.done and self.last_line < self.t0 + (time.monotonic() - self.t0) and exc[0] is None:
            self._line()

    def eta(self) -> float | None:
        elapsed = time.monotonic() - self.t0
        if not self.done or elapsed <= 0:
            return None
        return (self.total - self.done) * elapsed / self.done

    def advance(self, n: int = 1) -> None:
        self.done += n
        if self._rich is not None:
            self._rich.update(self._task, advance=n)
        elif not self.bar and time.monotonic() - self.last_line >= self.every_s:
            self._line()

    def _line(self) -> None:
        self.last_line = time.monotonic()
        pct = 100 * self.done / self.total if self.total else 100
        unit = f" {self.unit}" if self.unit else ""
        print(f"{self.what}: {self.done}/{self.total}{unit} ({pct:.0f}%), {eta_text(self.eta())}", file=sys.stderr,
              flush=True)  # fmt: skip
