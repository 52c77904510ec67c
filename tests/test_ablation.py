"""AGC ablation sweep (nfnet_jax.ablation): a tiny grid end to end, divergence recorded, outputs."""

import json
import math

import matplotlib.image
import numpy as np
import pytest

from nfnet_jax import ablation


def tiny_config(**overrides):
  c = ablation.get_config()
  c.update(image_size=8, steps=12, warmup_steps=0, batch_sizes=(16,),
           agc_thresholds=(1e-4,), global_norm=None, bn_model=None,
           sensitivity_batch_sizes=(), check_every=3, seeds=(0,))
  c.update(**overrides)
  return c


def test_grid_of_runs_and_bad_settings():
  c = ablation.get_config()
  specs = ablation.runs_of(c)
  # Every (model, batch) group is contiguous, so it compiles once.
  groups = [(s.model, s.batch_size) for s in specs]
  assert len(set(groups)) == sum(1 for i, g in enumerate(groups) if i == 0 or g != groups[i - 1])
  per_b = [s for s in specs if s.batch_size == c.batch_sizes[-1]]
  assert {(s.model, s.clip_mode, s.clipping) for s in per_b} == (
      {('nf', 'none', None), ('nf', 'global_norm', c.global_norm), ('bn', 'none', None)}
      | {('nf', 'agc', t) for t in c.agc_thresholds})
  assert len(specs) == len(set(specs))
  everywhere = set(c.batch_sizes) | set(c.sensitivity_batch_sizes)
  assert {s.batch_size for s in specs if s.model == 'bn'} == everywhere
  assert {s.batch_size for s in specs if s.clip_mode == 'none' and s.model == 'nf'} == everywhere
  assert {s.batch_size for s in specs if s.clipping == min(c.agc_thresholds)} == everywhere
  assert not any(s.model == 'bn' for s in ablation.runs_of(tiny_config()))
  assert ablation.thresholds(ablation.RunSpec('nf', 'agc', 0.02, 8)) == {
      'global_norm': ablation.DISABLED, 'agc_threshold': 0.02}
  for bad, word in ((dict(batch_sizes=(0,)), 'batch_sizes'),
                    (dict(agc_thresholds=(0.0,)), 'agc_thresholds'),
                    (dict(warmup_steps=9, steps=2), 'warmup_steps'),
                    (dict(seeds=()), 'seeds'),
                    (dict(lr_scaling='cubic'), 'lr_scaling'),
                    (dict(base_lr=float('nan')), 'base_lr')):
    with pytest.raises(ValueError, match=word):
      ablation.check_config(tiny_config(**bad))


@pytest.mark.slow
def test_sweep_records_divergence_and_writes_json_and_png(tmp_path):
  # At lr = 1000 * 16 / 256 the unclipped NF-ResNet blows up; AGC at a tiny threshold keeps the
  # same run finite. The diverged run must be recorded, not crash the sweep.
  lines = []
  # Two seeds: the plot averages them (it once tried to sort runs of equal λ).
  summary = ablation.run_sweep(tiny_config(base_lr=1000.0, seeds=(0, 1)), str(tmp_path),
                               printer=lines.append)
  on_disk = json.loads((tmp_path / 'agc_ablation.json').read_text())
  assert on_disk['runs'] == json.loads(json.dumps(summary['runs']))
  runs = {(r['clip_mode'], r['clipping']): r for r in on_disk['runs'] if r['seed'] == 0}
  assert set(runs) == {('none', None), ('agc', 1e-4)}
  assert sorted(r['seed'] for r in on_disk['runs']) == [0, 0, 1, 1]

  unclipped = runs[('none', None)]
  assert unclipped['diverged'] is True
  assert 1 <= unclipped['diverged_step'] <= unclipped['steps_run'] <= unclipped['steps']
  assert unclipped['eval_top1'] is None and unclipped['final_train_loss'] is None
  assert unclipped['peak_lr'] == pytest.approx(1000.0 * 16 / 256)
  assert unclipped['mean_clip_fraction'] is None

  clipped = runs[('agc', 1e-4)]
  assert clipped['diverged'] is False and clipped['steps_run'] == clipped['steps'] == 12
  assert 0.0 <= clipped['eval_top1'] <= 1.0 and clipped['eval_examples'] == 300
  assert math.isfinite(clipped['final_train_loss'])
  assert 0.5 < clipped['mean_clip_fraction'] <= 1.0  # λ = 1e-4 clips nearly every unit

  assert any('DIVERGED' in l for l in lines)
  assert any(l.startswith('run 4/4') and 'ETA' in l for l in lines)
  image = matplotlib.image.imread(str(tmp_path / 'agc_ablation.png'))
  assert image.shape[0] > 400 and image.shape[1] > 1200
  assert np.std(image[..., :3]) > 0.05  # not blank


def test_batch_size_sweep_grid_and_learning_rates():
  c = ablation.batch_size_config()
  specs = ablation.batch_runs_of(c)
  assert len(specs) == len(c.kinds) * len(c.batch_sizes) * len(c.seeds) == 48
  assert {s.model for s in specs} == {'bn', 'nf', 'skipinit', 'fixup'}
  assert {s.batch_size for s in specs} == {2, 8, 32, 256}
  assert all(s.clip_mode == 'none' for s in specs)
  groups = [(s.model, s.batch_size) for s in specs]
  assert len(set(groups)) == sum(1 for i, g in enumerate(groups) if i == 0 or g != groups[i - 1])
  assert ablation.peak_lr(c, 256) == pytest.approx(0.01)
  assert ablation.peak_lr(c, 4) == pytest.approx(0.01 / 8)
  assert ablation.peak_lr(ablation.get_config(), 64) == pytest.approx(1.6 * 64 / 256)
