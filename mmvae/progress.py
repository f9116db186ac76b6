"""Progress for long commands: a tqdm bar on a terminal, plain periodic lines otherwise (nohup, CI, SLURM).

    progress = Progress(total=7000, desc="train", unit="step")
    progress.update(n, loss=1.23)      # absolute position; a bar refresh, or a line at most every `every_s`
    progress.event("eval at step 2000: label_accuracy 0.93")   # always shown, without breaking the bar
    progress.close()
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO


def _clock(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}"


class Progress:
    def __init__(self, total: int | None, desc: str, unit: str = "step", initial: int = 0, enabled: bool = True,
                 stream: TextIO | None = None, every_s: float = 10.0):
        self.total, self.desc, self.unit, self.enabled = total, desc, unit, enabled
        self.stream = stream or sys.stderr
        self.every_s = every_s
        self.start_n, self.n = initial, initial
        self.started = self.last_line = time.perf_counter()
        self.bar = None
        if enabled and self.stream.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, file=self.stream, dynamic_ncols=True)

    def rate(self) -> float:
        """Units per second since the start."""
        elapsed = time.perf_counter() - self.started
        return (self.n - self.start_n) / elapsed if elapsed > 0 else 0.0

    def line(self, postfix: dict[str, Any] | None = None) -> str:
        """The plain progress line: position, share, rate, ETA, postfix."""
        rate = self.rate()
        parts = [f"{self.desc}: {self.unit} {self.n:,}" + (f"/{self.total:,}" if self.total else "")]
        if self.total:
            parts.append(f"{100 * self.n / self.total:.0f}%")
        parts.append(f"{rate:.1f} {self.unit}s/s")
        if self.total and rate > 0:
            parts.append(f"ETA {_clock((self.total - self.n) / rate)}")
        parts += [f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in (postfix or {}).items()]
        return ", ".join(parts)

    def update(self, n: int, force: bool = False, **postfix: Any) -> None:
        """Move to position n (absolute)."""
        self.n = n
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.n = n
            if postfix:
                self.bar.set_postfix({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in postfix.items()},
                                     refresh=False)
            self.bar.refresh()
            return
        now = time.perf_counter()
        if force or now - self.last_line >= self.every_s or (self.total and n >= self.total):
            self.last_line = now
            print(self.line(postfix), file=self.stream, flush=True)

    def event(self, text: str) -> None:
        """A line that is always shown (eval results, checkpoints, phases)."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(f"{self.desc}: {text}", file=self.stream)
        else:
            print(f"{self.desc}: {text}", file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
