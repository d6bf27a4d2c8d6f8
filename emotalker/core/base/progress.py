"""Progress reporting for long jobs: a tqdm bar on a terminal, JSON lines for the add-on.

`--progress json` prints one object per line on stdout:
{"stage": ..., "step": ..., "total": ..., "loss": ..., "eta": seconds}
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from typing import Callable


class StopRequested(Exception):
    """Raised by a progress sink to stop a long job at a step boundary (the worker's cancel).

    Every step is whole when `update` is called, so a training loop saves its
    checkpoint before letting this through, and a resumed run continues from that step."""


@dataclass
class Progress:
    """One stage's progress; use as a context manager and call `update` per step."""

    stage: str
    total: int
    mode: str = "bar"  # "bar" | "json" | "none"
    initial: int = 0
    # Where JSON events go (default: a line on stdout). The worker passes its own,
    # which raises StopRequested when the job was cancelled: every update is a safe stop point.
    sink: Callable[[dict], None] | None = None
    _bar: object = field(default=None, init=False, repr=False)
    _start: float = field(default=0.0, init=False, repr=False)
    step: int = field(default=0, init=False)

    def __enter__(self) -> "Progress":
        self.step = self.initial
        self._start = time.monotonic()
        if self.mode == "bar":
            from tqdm import tqdm

            self._bar = tqdm(total=self.total, initial=self.initial, desc=self.stage, dynamic_ncols=True)
        return self

    def update(self, n: int = 1, **scalars: float) -> None:
        self.step += n
        if self._bar is not None:
            self._bar.update(n)
            if scalars:
                self._bar.set_postfix({k: f"{v:.4g}" for k, v in scalars.items()}, refresh=False)
        elif self.mode == "json":
            done = self.step - self.initial
            elapsed = time.monotonic() - self._start
            eta = elapsed / done * (self.total - self.step) if done > 0 else None
            event = {"stage": self.stage, "step": self.step, "total": self.total, "eta": eta}
            event.update({k: float(v) for k, v in scalars.items()})
            if self.sink is not None:
                self.sink(event)
            else:
                sys.stdout.write(json.dumps(event) + "\n")
                sys.stdout.flush()

    def set_total(self, total: int) -> None:
        """The stage now ends at `total` steps (a time budget refitted them)."""
        self.total = total
        if self._bar is not None:
            self._bar.total = total
            self._bar.refresh()

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.close()


def note(mode: str, text: str) -> None:
    """A line for a person (a run resumed, a checkpoint missing), left out of JSON progress."""
    if mode != "json":
        print(text, flush=True)
