"""Metric writers: TensorBoard event files (tf.summary) and metrics.jsonl in the workdir.

TensorBoard files are written by TensorFlow's own filesystems (local, gs://, ram://, ...);
metrics.jsonl goes through nfnet_jax.paths.
"""

from __future__ import annotations

import json
from typing import Mapping

import numpy as np

from nfnet_jax import extras
from nfnet_jax import paths


class MetricWriter:
  """Writes scalars to TensorBoard and appends one JSON line per call to metrics.jsonl.

  A run resumed at `start_step` first drops the rows written after it, so no step repeats.

  Only process 0 should write; other processes get a writer with enabled=False.
  """

  def __init__(self, workdir: str, *, enabled: bool = True, start_step: int = 0,
               tensorboard: bool = True):
    self.enabled = enabled
    self._summary = None
    if not enabled:
      return
    paths.makedirs(workdir)
    self._jsonl_path = paths.join(workdir, 'metrics.jsonl')
    _drop_rows_after(self._jsonl_path, start_step)
    if not tensorboard:
      return
    tf = extras.require('tensorflow', 'TensorBoard metrics (nfnet_jax.train)')
    from tensorflow.core.framework import summary_pb2  # pylint: disable=import-outside-toplevel
    self._tf = tf
    # tf.summary.scalar needs the tensorboard package; tf.summary.write with the scalars plugin's
    # metadata writes the same event records with tensorflow alone.
    self._metadata = summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name='scalars'))
    self._summary = tf.summary.create_file_writer(paths.join(workdir, 'tensorboard'))

  def write(self, step: int, scalars: Mapping[str, float], *, prefix: str = '') -> None:
    if not self.enabled:
      return
    values = {f'{prefix}{k}': float(np.asarray(v)) for k, v in scalars.items()}
    if self._summary is not None:
      with self._summary.as_default():
        for name, value in values.items():
          self._tf.summary.write(name, self._tf.constant(value, self._tf.float32), step=step,
                                 metadata=self._metadata)
      self._summary.flush()
    paths.append_text(self._jsonl_path, json.dumps({'step': int(step), **values}) + '\n')

  def close(self) -> None:
    if self._summary is not None:
      self._summary.close()


def _drop_rows_after(path: str, step: int) -> None:
  """Removes rows past `step` (written after the checkpoint a run resumes from), atomically."""
  if not paths.exists(path):
    return
  lines = [line for line in paths.read_text(path).splitlines(True) if line.strip()]
  kept = [line for line in lines if json.loads(line).get('step', 0) <= step]
  if len(kept) < len(lines):
    paths.write_text(path, ''.join(kept))


def read_jsonl(path: str) -> list[dict]:
  """Reads back metrics.jsonl (one dict per written line)."""
  return [json.loads(line) for line in paths.read_text(path).splitlines() if line.strip()]
