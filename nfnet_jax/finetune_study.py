"""Does a pretrained start help? Digits 0-4 pretrain the quickstart network; digits 5-9 fine-tune it.

Both halves are scikit-learn's digits written as PNG class folders (`write_digit_folders`: the
fixed train/validation split of nfnet_jax.data.digits, 8x8 upsampled bilinearly to 32x32 grey
PNGs), read through the 'folder:' dataset. One pretraining run on digits 0-4, then for every seed
two fine-tuning runs on digits 5-9 with the same config (the fine-tuning recipe with the
pretraining run's network, image sizes and augmentation), steps and seed: one from the pretrained
run's EMA params (init_head='reset': the head has the same shape, 5 classes, but they are
new classes, so 'auto' would keep it), one from random weights. The validation curves
(top-1 of the raw params, every `eval_every` steps) and the wall time of each run go to JSON and a
PNG plot.
"""

from __future__ import annotations

import json
import os
import time
from typing import Callable, Sequence

import numpy as np

from nfnet_jax.data import digits as digits_lib

SPLIT_DIRS = {'train': 'train', 'validation': 'val'}
NETWORK_KEYS = ('model', 'model_kwargs', 'image_size', 'eval_image_size', 'eval_preprocess', 'augment',
                'bf16')


def write_digit_folders(out: str, digits: Sequence[int], image_size: int = 32) -> dict:
  """Writes OUT/{train,val}/<digit>/<index>.png for `digits`; returns {split: images written}."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  m = digits_lib._upsample_matrix(image_size)  # pylint: disable=protected-access
  counts = {}
  for split, sub in SPLIT_DIRS.items():
    images, labels = digits_lib._raw()[split]  # pylint: disable=protected-access
    counts[split] = 0
    for d in digits:
      os.makedirs(os.path.join(out, sub, str(d)), exist_ok=True)
    for i in np.flatnonzero(np.isin(labels, list(digits))):
      grey = np.clip(np.rint(m @ images[i] @ m.T), 0, 255).astype(np.uint8)[..., None]
      path = os.path.join(out, sub, str(labels[i]), f'{i:04d}.png')
      tf.io.write_file(path, tf.io.encode_png(grey))
      counts[split] += 1
  return counts


def eval_curve(workdir: str) -> list[tuple[int, float]]:
  """(step, validation top-1) of a run, from its metrics.jsonl."""
  from nfnet_jax.train.writers import read_jsonl  # pylint: disable=import-outside-toplevel
  key = 'eval/val/params/top1'
  return [(r['step'], r[key]) for r in read_jsonl(os.path.join(workdir, 'metrics.jsonl')) if key in r]


def run(pretrain_config, finetune_config, out: str, *, seeds: Sequence[int], steps: int,
        eval_every: int, log: Callable[[str], None] = print) -> dict:
  """Pretrains once (or reuses OUT's finished pretraining run), fine-tunes from it and from scratch
  per seed; writes OUT/finetune_study.json."""
  from nfnet_jax import train  # pylint: disable=import-outside-toplevel
  done = [s for s in seeds for start in ('pretrained', 'scratch')
          if os.path.exists(os.path.join(out, 'runs', f'{start}_seed{s}'))]
  if done:
    raise FileExistsError(f'{out}/runs already holds fine-tuning runs of seeds {sorted(set(done))}; '
                          'choose a new --out (a finished pretraining run there is reused).')
  source, target = os.path.join(out, 'digits_0_4'), os.path.join(out, 'digits_5_9')
  log(f'writing {write_digit_folders(source, range(5))} PNGs of digits 0-4 to {source}')
  log(f'writing {write_digit_folders(target, range(5, 10))} PNGs of digits 5-9 to {target}')

  pre = pretrain_config.copy_and_resolve_references()
  pre.dataset = f'folder:{source}'
  pre_dir = os.path.join(out, 'runs', 'pretrain_0_4')
  reused = os.path.isdir(os.path.join(pre_dir, 'checkpoints'))
  t0 = time.time()
  pre_result = train.train_and_evaluate(pre, pre_dir)
  result = {'pretrain': {'workdir': os.path.relpath(pre_dir, out), 'steps': pre_result['step'],  # under OUT
                         'top1': eval_curve(pre_dir)[-1][1],
                         'seconds': None if reused else time.time() - t0},
            'steps': steps, 'batch_size': finetune_config.batch_size, 'seeds': list(seeds),
            'runs': []}
  for seed in seeds:
    for start in ('pretrained', 'scratch'):
      c = finetune_config.copy_and_resolve_references()
      with c.unlocked():
        for key in NETWORK_KEYS:  # the pretrained network, with the fine-tuning recipe
          c[key] = pre[key]
      # AGC's eps floor is part of what this network needs: with DeepMind's 1e-3 its zero-initialised
      # SkipInit gains cannot open from scratch (configs/quickstart.py), which would handicap the control.
      c.optimizer.clip_eps = pre.optimizer.clip_eps
      c.dataset = f'folder:{target}'
      c.init_from = pre_dir if start == 'pretrained' else ''
      c.init_from_ema = start == 'pretrained'
      c.init_head = 'reset'  # 5 classes to 5 classes: the shapes fit, but the classes are new
      c.seed, c.total_steps, c.eval_every_steps = seed, steps, eval_every
      c.checkpoint_every_steps = steps
      workdir = os.path.join(out, 'runs', f'{start}_seed{seed}')
      t0 = time.time()
      r = train.train_and_evaluate(c, workdir)
      val = r['eval']['val']
      record = {'start': start, 'seed': seed, 'top1': val['params']['top1'],
                'top1_ema': val['ema_params']['top1'], 'seconds': time.time() - t0,
                'curve': eval_curve(workdir), 'num_examples': val['params']['num_examples']}
      log(f'{start} seed {seed}: top1 {record["top1"]:.4f} (EMA {record["top1_ema"]:.4f}) after '
          f'{steps} steps, {record["seconds"]:.0f} s')
      result['runs'].append(record)
      _write(summarize(result), os.path.join(out, 'finetune_study.json'))  # after every run
  return summarize(result)


def summarize(result: dict) -> dict:
  """Adds mean/min/max over seeds of top1, top1_ema and seconds per start."""
  for start in ('pretrained', 'scratch'):
    runs = [r for r in result['runs'] if r['start'] == start]
    if runs:
      result[start] = {k: {'mean': float(np.mean([r[k] for r in runs])),
                           'min': float(np.min([r[k] for r in runs])),
                           'max': float(np.max([r[k] for r in runs]))}
                       for k in ('top1', 'top1_ema', 'seconds')}
  return result


def _write(result: dict, path: str) -> None:
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(result, f, indent=2)
    f.write('\n')
  os.replace(tmp, path)


def plot(result: dict, path: str) -> None:
  """Validation top-1 against steps: every seed thin, the mean over seeds thick, per start."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, ax = plt.subplots(figsize=(6.4, 4.2))
  for start, color in (('pretrained', 'tab:blue'), ('scratch', 'tab:orange')):
    curves = [np.asarray(r['curve']) for r in result['runs'] if r['start'] == start]
    for c in curves:
      ax.plot(c[:, 0], c[:, 1], color=color, alpha=0.3, lw=1)
    mean = np.mean([c[:, 1] for c in curves], axis=0)
    label = (f'{"from digits 0-4" if start == "pretrained" else "from scratch"}: '
             f'{result[start]["top1"]["mean"]:.1%} at step {result["steps"]}')
    ax.plot(curves[0][:, 0], mean, color=color, lw=2.2, label=label)
  ax.set_xlabel(f'fine-tuning step (batch {result["batch_size"]})')
  ax.set_ylabel('validation top-1 on digits 5-9')
  ax.set_ylim(0, 1)
  ax.grid(alpha=0.3)
  ax.set_title(f'Fine-tuning on a PNG folder of digits 5-9 ({len(result["seeds"])} seeds)')
  ax.legend(loc='lower right')
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
