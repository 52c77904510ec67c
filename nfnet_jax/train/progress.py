"""A console progress line: step, loss, images/s and ETA."""

from __future__ import annotations

import sys
import time
from typing import Mapping, TextIO


def format_duration(seconds: float) -> str:
  seconds = max(0, int(round(seconds)))
  hours, rest = divmod(seconds, 3600)
  minutes, secs = divmod(rest, 60)
  return f'{hours}:{minutes:02d}:{secs:02d}'


class Progress:
  """Prints `[####......] step 120/1000 loss 1.234 top1 0.56 | 812 img/s | ETA 0:03:12` lines.

  Throughput and ETA are measured between consecutive calls to `update`, so compilation time
  is excluded once the first interval has passed.
  """

  def __init__(self, total_steps: int, images_per_step: int, *, enabled: bool = True,
               stream: TextIO | None = None, width: int = 20):
    self.total_steps = total_steps
    self.images_per_step = images_per_step
    self.enabled = enabled
    self.stream = stream or sys.stdout
    self.width = width
    self._last: tuple[int, float] | None = None

  def start(self, step: int) -> None:
    self._last = (step, time.perf_counter())

  def update(self, step: int, metrics: Mapping[str, float]) -> dict:
    """Prints one line; returns {'images_per_sec', 'eta_sec'} for the metric writers."""
    now = time.perf_counter()
    last_step, last_time = self._last or (step, now)
    self._last = (step, now)
    steps = step - last_step
    rate = steps / (now - last_time) if steps > 0 and now > last_time else float('nan')
    images_per_sec = rate * self.images_per_step
    eta = (self.total_steps - step) / rate if rate == rate and rate > 0 else float('nan')
    if self.enabled:
      done = int(self.width * step / max(1, self.total_steps))
      bar = '#' * done + '.' * (self.width - done)
      parts = [f'[{bar}] step {step}/{self.total_steps}']
      for key in ('loss', 'top1', 'top5'):
        if key in metrics:
          parts.append(f'{key} {metrics[key]:.4f}')
      parts.append(f'| {images_per_sec:.0f} img/s' if images_per_sec == images_per_sec else '| - img/s')
      parts.append(f'| ETA {format_duration(eta)}' if eta == eta else '| ETA -')
      print(' '.join(parts), file=self.stream, flush=True)
    return {'images_per_sec': images_per_sec, 'eta_sec': eta}
