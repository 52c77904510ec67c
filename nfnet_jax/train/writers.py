"""Metric writers: TensorBoard event files (tf.summary) and metrics.jsonl in the workdir."""

from __future__ import annotations

import json
import os
from typing import Mapping

import numpy as np

from nfnet_jax import extras


class MetricWriter:
  """Writes scalars to TensorBoard and appends one JSON line per call to metrics.jsonl.

  A run resumed at `start_step` first drops the rows written after it, so no step repeats.

  Only process 0 should write; other processes get a writer with enabled=False.
  """

  def __init__(self, workdir: str, *, enabled: bool = True, start_step: int = 0):
    self.enabled = enabled
    self._summary = None
    if not enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    self._jsonl_path = os.path.join(workdir, 'metrics.jsonl')
    _drop_rows_after(self._jsonl_path, start_step)
    tf = extras.require('tensorflow', 'TensorBoard metrics (nfnet_jax.train)')
    from tensorflow.core.framework import summary_pb2  # pylint: disable=import-outside-toplevel
    self._tf = tf
    # tf.summary.scalar needs the tensorboard package; tf.summary.write with the scalars plugin's
    # metadata writes the same event records with tensorflow alone.
    self._metadata = summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name='scalars'))
    self._summary = tf.summary.create_file_writer(os.path.join(workdir, 'tensorboard'))

  def write(self, step: int, scalars: Mapping[str, float], *, prefix: str = '') -> None:
    if not self.enabled:
      return
    values = {f'{prefix}{k}': float(np.asarray(v)) for k, v in scalars.items()}
    with self._summary.as_default():
      for name, value in values.items():
        self._tf.summary.write(name, self._tf.constant(value, self._tf.float32), step=step,
                               metadata=self._metadata)
    self._summary.flush()
    with open(self._jsonl_path, 'a') as f:
      f.write(json.dumps({'step': int(step), **values}) + '\n')

  def close(self) -> None:
    if self._summary is not None:
      self._summary.close()


def _drop_rows_after(path: str, step: int) -> None:
  """Removes rows past `step` (written after the checkpoint a run resumes from), atomically."""
  if not os.path.exists(path):
    return
  with open(path) as f:
    lines = [line for line in f if line.strip()]
  kept = [line for line in lines if json.loads(line).get('step', 0) <= step]
  if len(kept) < len(lines):
    with open(path + '.tmp', 'w') as f:
      f.writelines(kept)
    os.replace(path + '.tmp', path)


def read_jsonl(path: str) -> list[dict]:
  """Reads back metrics.jsonl (one dict per written line)."""
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]
