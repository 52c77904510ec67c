"""Who reads what: processes, devices, batch shapes and shards."""

import dataclasses
import math
from typing import Optional

import jax


@dataclasses.dataclass(frozen=True)
class Layout:
  """This process's place among `process_count` processes with `local_devices` devices each."""
  process_index: int
  process_count: int
  local_devices: int

  @property
  def global_devices(self) -> int:
    return self.process_count * self.local_devices


def resolve_layout(process_index: Optional[int] = None, process_count: Optional[int] = None,
                   local_devices: Optional[int] = None) -> Layout:
  """Defaults come from jax; tests pass them to simulate several processes in one."""
  layout = Layout(jax.process_index() if process_index is None else int(process_index),
                  jax.process_count() if process_count is None else int(process_count),
                  jax.local_device_count() if local_devices is None else int(local_devices))
  if layout.process_count < 1 or layout.local_devices < 1 or not (
      0 <= layout.process_index < layout.process_count):
    raise ValueError(f"Invalid process/device layout {layout}")
  return layout


def per_device_batch(global_batch_size: int, layout: Layout, grad_accum_steps: int = 1) -> int:
  """Examples per device per micro-batch; raises if the global batch does not divide evenly."""
  if grad_accum_steps < 1:
    raise ValueError(f"grad_accum_steps must be ≥ 1, got {grad_accum_steps}")
  parts = layout.global_devices * grad_accum_steps
  if global_batch_size < 1 or global_batch_size % parts:
    raise ValueError(
        f"global_batch_size={global_batch_size} must be a positive multiple of global devices "
        f"({layout.global_devices}) × grad_accum_steps ({grad_accum_steps}) = {parts}; "
        f"e.g. {max(parts, (global_batch_size // parts) * parts)}")
  return global_batch_size // parts


def eval_per_device_batch(global_batch_size: int, layout: Layout) -> int:
  """Examples per device per eval batch: the global batch rounded up to a multiple of the devices
  (the extra rows are padding with mask False, so any batch size works)."""
  if global_batch_size < 1:
    raise ValueError(f"global_batch_size must be positive, got {global_batch_size}")
  return math.ceil(global_batch_size / layout.global_devices)


def shard_range(num_examples: int, layout: Layout):
  """[start, end) of this process's contiguous slice; sizes differ by at most one, larger ones first."""
  base, rem = divmod(num_examples, layout.process_count)
  p = layout.process_index
  start = p * base + min(p, rem)
  return start, start + base + (1 if p < rem else 0)


def eval_num_batches(num_examples: int, layout: Layout, local_batch: int) -> int:
  """Batches every process yields, the same on all so that pmap'd eval steps stay in lockstep."""
  largest_shard = math.ceil(num_examples / layout.process_count)
  return math.ceil(largest_shard / local_batch)
