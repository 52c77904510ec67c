"""When to stop for a preemption: one step, the same on every host, at which all of them save.

One process: SIGTERM sets a flag (checkpoints.TerminationFlag), read after every step. Several
processes: jax's preemption service (started by jax.distributed.initialize) takes the scheduler's
notice (SIGTERM) on any host and the hosts agree on a step;
multihost_utils.reached_preemption_sync_point turns True at that step everywhere. Where the service
is off (jax_enable_preemption_service=False), the SIGTERM flags are all-gathered at log steps.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.experimental import multihost_utils

from nfnet_jax.train.checkpoints import TerminationFlag


class Preemption:
  """Context manager around the step loop; `reached(step, log_step)` says when to save and stop."""

  def __init__(self, start_step: int):
    self._start_step = start_step
    self._flag = TerminationFlag()
    self.synced = False   # whether jax's preemption service decides (several processes)

  def __enter__(self) -> 'Preemption':
    if jax.process_count() > 1:
      try:  # every host calls it at every step, from the same start step
        multihost_utils.reached_preemption_sync_point(self._start_step)
        self.synced = True
      except RuntimeError:  # the preemption service is off
        self.synced = False
    if not self.synced:  # jax's own SIGTERM handler must stay in place when it is on
      self._flag.__enter__()
    return self

  def __exit__(self, *exc) -> None:
    if not self.synced:
      self._flag.__exit__(*exc)

  def reached(self, step: int, log_step: bool) -> bool:
    """True on every process at the same step once any of them was told to stop."""
    if self.synced:
      return multihost_utils.reached_preemption_sync_point(step)
    if jax.process_count() == 1:
      return self._flag.requested
    if not log_step:  # a collective only at log steps, which every host reaches together
      return False
    return bool(np.any(multihost_utils.process_allgather(np.array(self._flag.requested))))
