"""Tests for nfnet_jax.benchmark's timing helpers (the timings themselves live in scripts/benchmark.py)."""

import jax.numpy as jnp
import pytest

from nfnet_jax import benchmark


def test_time_alternating_takes_turns_and_times_every_call():
  calls = []

  def make(name):
    def fn():
      calls.append(name)
      return jnp.zeros(())
    return fn

  a, b = benchmark.time_alternating([make('a'), make('b')], warmup=1, steps=4)
  assert calls == ['a', 'b'] + ['a', 'b', 'b', 'a', 'a', 'b', 'b', 'a']
  for timing in (a, b):
    assert len(timing['times_s']) == 4
    assert timing['min_s'] == min(timing['times_s']) <= timing['median_s']
  with pytest.raises(ValueError, match='steps >= 1'):
    benchmark.time_calls(make('c'), steps=0)
