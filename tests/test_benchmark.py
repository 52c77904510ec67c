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


def test_a_train_record_says_the_step_ran_the_fused_update():
  from nfnet_jax import sgd_update
  import native_required
  native_required.require(sgd_update.available(), sgd_update.reason(), "the fused update")
  cfg = benchmark.StepConfig(model='nf_resnet50', batch_size=2, image_size=32, num_classes=10)
  record = benchmark.train_step(cfg, {'median_flops_per_s': 1e11}, warmup=1, steps=1)
  assert record['update'] == 'fused'
  table = benchmark.format_table([record], {'size': 8, 'dtype': 'float32', 'median_flops_per_s': 1e11,
                                            'best_flops_per_s': 1e11})
  assert 'b2 32px float32 d1 acc1 fused' in table.splitlines()[2]
