"""Device prefetch: the next batches are copied to the devices while the current step runs."""

from __future__ import annotations

import collections
from typing import Iterable, Iterator

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec


def to_device(batches: Iterable[dict], size: int = 2) -> Iterator[dict]:
  """Yields `batches` (leading axis: local devices) as device arrays, `size` transfers ahead.

  jax.device_put returns at once and copies in the background, so with size >= 2 the transfer of
  batch n+1 overlaps step n. size=0 passes the host batches through (pmap then copies them).
  """
  if size <= 0:
    yield from batches
    return
  devices = jax.local_devices()
  sharding = NamedSharding(Mesh(np.array(devices), ('batch',)), PartitionSpec('batch'))
  queue = collections.deque()
  for batch in batches:
    queue.append(jax.device_put(batch, sharding))
    if len(queue) >= size:
      yield queue.popleft()
  while queue:
    yield queue.popleft()
