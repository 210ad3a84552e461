"""Progress of long work, readable both live and in a log file.

On a terminal: a tqdm bar. Otherwise (output redirected to a file, `ray job submit`, CI, nohup), or with the
bar switched off: one log line every `every_s` seconds (30 by default) with the count, the rate and the ETA, so
a slow job can be told from a hung one by reading its log.
"""

from __future__ import annotations

import logging
import sys
import time

from tqdm.auto import tqdm


class Progress:
    def __init__(
        self,
        total: int,
        desc: str,
        unit: str = "it",
        initial: int = 0,
        bar: bool = True,
        every_s: float = 30.0,
        logger: logging.Logger | None = None,
    ):
        self.total, self.desc, self.unit, self.every_s = total, desc, unit, every_s
        self.done = self.start = initial
        self.log = logger or logging.getLogger("kdsr.progress")
        self.t0 = self.last = time.perf_counter()
        self.logged = initial  # the count the last log line showed
        self.postfix: dict = {}
        live = bar and sys.stderr.isatty()
        self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True) if live else None

    def update(self, n: int = 1, **postfix) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix(postfix, refresh=False)
            return
        now = time.perf_counter()
        if now - self.last >= self.every_s:
            self.last, self.logged = now, self.done
            self.log.info("%s", self.line(now, postfix))
        self.postfix = postfix

    def line(self, now: float, postfix: dict | None = None) -> str:
        rate = (self.done - self.start) / max(now - self.t0, 1e-9)
        eta = f"ETA {(self.total - self.done) / rate:.0f} s" if rate > 0 else "ETA unknown until the first part is done"
        extra = "".join(f", {k} {v}" for k, v in (postfix or {}).items())
        return (
            f"{self.desc}: {self.done:,}/{self.total:,} {self.unit} ({100 * self.done / max(self.total, 1):.0f}%), "
            f"{rate:.2f} {self.unit}/s, {eta}{extra}"
        )

    def close(self) -> None:
        """Close the bar; without one, log the final count unless the last line already showed it."""
        if self.bar is not None:
            self.bar.close()
        elif self.logged != self.done:
            self.logged = self.done
            self.log.info("%s", self.line(time.perf_counter(), self.postfix))
