"""Small-scale reproductions of the NFNet paper's AGC ablation and of the NF-ResNet paper's
batch-size robustness.

AGC ablation (Brock, De, Smith & Simonyan 2021, Sec. 4.1, Fig. 2): an NF-ResNet trained with no
clipping, with global-norm clipping and with adaptive gradient clipping at several thresholds λ,
and a BatchNorm ResNet, at several batch sizes B with the learning rate scaled linearly
(lr = base_lr · B / 256), every run for the same number of steps (`run_sweep`).
Batch-size robustness (Brock, De & Smith 2021, NF-ResNets): BN-, NF-, SkipInit- and Fixup-ResNets
of one shape at batch sizes from 2 up, the same number of steps at every batch size, several seeds
(`run_batch_sweep`).

Every run uses one device, so the batch size is the per-device batch (BN statistics over B
examples). The train step is `nfnet_jax.train.make_train_step`; the optimizer is
`nfnet_jax.optim.create` preceded by a global-norm clip and AGC whose thresholds are traced
hyperparameters (optax.inject_hyperparams), so all runs of one model and batch size share one
compiled step. "No clipping" sets both thresholds to DISABLED, which no gradient reaches.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from typing import Callable, Iterable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from nfnet_jax import agc
from nfnet_jax import data as data_lib
from nfnet_jax import evaluate as eval_lib
from nfnet_jax import extras
from nfnet_jax import models
from nfnet_jax import optim
from nfnet_jax import paths
from nfnet_jax.train.state import init_state
from nfnet_jax.train.step import make_train_step, pmap_train_step

ml_collections = extras.require('ml_collections', 'the AGC ablation (nfnet_jax.ablation)')

# A threshold no gradient reaches: with it a clip is the identity (float32 max).
DISABLED = float(np.finfo(np.float32).max)
CLIP_MODES = ('none', 'global_norm', 'agc')
MODEL_KINDS = ('nf', 'bn', 'skipinit', 'fixup')
LABELS = {'nf': 'NF-ResNet', 'bn': 'BN-ResNet', 'skipinit': 'SkipInit-ResNet',
          'fixup': 'Fixup-ResNet'}
LR_SCALINGS = ('linear', 'sqrt')


def get_config() -> ml_collections.ConfigDict:
  """Defaults of the AGC sweep: tiny NF-/BN-ResNets on 8x8 digits, 200 steps at every batch size.

  base_lr = 1.6 puts lr · λ (AGC's bound on each unit's relative step) at the largest batch where
  the paper has it at B = 4096 (lr 1.6, λ = 0.01).
  """
  return ml_collections.ConfigDict(dict(
      dataset='digits',  # 'digits' (in memory) or any prepared tfds dataset.
      data_dir=None,
      image_size=8,
      nf_model='nf_resnet50',
      bn_model='resnet50',  # None: no BN-ResNet runs.
      skipinit_model='skipinit_resnet50',
      fixup_model='fixup_resnet50',
      model_kwargs=dict(depth=(1, 1, 1, 1), width=1),  # one block per stage, narrowest width.
      steps=200,  # The same number of steps at every batch size.
      base_lr=1.6,  # Peak lr per 256 examples.
      lr_scaling='linear',  # lr = base_lr * B / 256 ('linear') or base_lr * sqrt(B / 256).
      warmup_steps=20,
      weight_decay=5e-5,
      batch_sizes=(4, 16, 64, 256),  # AGC ablation.
      agc_thresholds=(0.01, 0.04, 0.16),
      global_norm=1.0,  # Threshold of the global-norm clip (the paper's alternative); None: no such run.
      sensitivity_batch_sizes=(),  # Extra batch sizes for NF (no clip; smallest λ) vs BN.
      seeds=(0, 1, 2),
      check_every=5,  # Steps between checks of the loss for NaN/Inf (a diverged run stops).
  ))


def batch_size_config() -> ml_collections.ConfigDict:
  """Defaults of the batch-size robustness sweep: BN/NF/SkipInit/Fixup at B = 2, 8, 32, 256, 3 seeds.

  One learning-rate rule for every model, lr = 0.01 · sqrt(B / 256) (0.00088 at B = 2, 0.01 at
  256), 200 steps (20 warm-up) at every batch size; no clipping. The unclipped NF-ResNet diverged at
  every batch size at 0.05 · sqrt(B / 256) (from lr 0.0044), SkipInit and Fixup did not.
  """
  c = get_config()
  c.update(steps=200, warmup_steps=20, base_lr=0.01, lr_scaling='sqrt',
           batch_sizes=(2, 8, 32, 256), seeds=(0, 1, 2))
  c.kinds = ('bn', 'nf', 'skipinit', 'fixup')
  return c


@dataclasses.dataclass(frozen=True)
class RunSpec:
  """One training run of the sweep."""
  model: str            # one of MODEL_KINDS
  clip_mode: str        # 'none', 'global_norm' or 'agc'
  clipping: Optional[float]
  batch_size: int
  seed: int = 0

  @property
  def label(self) -> str:
    if self.model != 'nf':
      return LABELS[self.model]
    if self.clip_mode == 'none':
      return 'NF-ResNet, no clipping'
    if self.clip_mode == 'global_norm':
      return f'NF-ResNet, global-norm clip {self.clipping:g}'
    return f'NF-ResNet, AGC λ={self.clipping:g}'


def check_config(c) -> None:
  """Raises ValueError naming the first bad sweep setting (before anything compiles)."""
  def positive_ints(key, allow_empty=False):
    values = tuple(c[key])
    if (not values and not allow_empty) or any(isinstance(v, bool) or int(v) != v or v < 1 for v in values):
      raise ValueError(f'{key}={values!r}: give one or more positive integers.')
  positive_ints('batch_sizes')
  positive_ints('sensitivity_batch_sizes', allow_empty=True)
  if not tuple(c.seeds) or any(isinstance(v, bool) or int(v) != v or v < 0 for v in c.seeds):
    raise ValueError(f'seeds={tuple(c.seeds)!r}: give one or more integers >= 0.')
  if any(not (0 < float(t) < math.inf) for t in c.agc_thresholds):
    raise ValueError(f'agc_thresholds={tuple(c.agc_thresholds)!r}: thresholds must be finite and > 0.')
  for key in ('base_lr', 'global_norm'):
    if (key != 'global_norm' or c[key] is not None) and not 0 < float(c[key]) < math.inf:
      raise ValueError(f'{key}={c[key]!r} must be a finite number > 0.')
  if isinstance(c.steps, bool) or int(c.steps) != c.steps or c.steps < 1:
    raise ValueError(f'steps={c.steps!r} must be a positive integer.')
  if not 0 <= int(c.warmup_steps) < int(c.steps):
    raise ValueError(f'warmup_steps={c.warmup_steps!r} must be >= 0 and below steps={c.steps!r}.')
  if c.lr_scaling not in LR_SCALINGS:
    raise ValueError(f'lr_scaling={c.lr_scaling!r} must be one of {list(LR_SCALINGS)}.')
  if any(k not in MODEL_KINDS for k in c.get('kinds', ())):
    raise ValueError(f'kinds={tuple(c.kinds)!r}: choose from {list(MODEL_KINDS)}.')
  if int(c.check_every) < 1:
    raise ValueError(f'check_every={c.check_every!r} must be a positive integer.')
  if int(c.image_size) < 8:
    raise ValueError(f'image_size={c.image_size!r} must be at least 8.')


def runs_of(config) -> list[RunSpec]:
  """The runs of the sweep, grouped by (model, batch size) so that each group compiles once."""
  c = config
  specs = []
  for seed in (int(v) for v in c.seeds):
    for b in sorted(set(int(b) for b in c.batch_sizes)):
      specs.append(RunSpec('nf', 'none', None, b, seed))
      if c.global_norm is not None:
        specs.append(RunSpec('nf', 'global_norm', float(c.global_norm), b, seed))
      specs += [RunSpec('nf', 'agc', float(t), b, seed) for t in c.agc_thresholds]
      specs.append(RunSpec('bn', 'none', None, b, seed))
    for b in sorted(set(int(b) for b in c.sensitivity_batch_sizes)):
      specs += [RunSpec('nf', 'none', None, b, seed), RunSpec('bn', 'none', None, b, seed)]
      specs += [RunSpec('nf', 'agc', float(min(c.agc_thresholds)), b, seed)]
  unique = [s for s in dict.fromkeys(specs) if s.model == 'nf' or c.bn_model is not None]
  return sorted(unique, key=lambda s: (s.batch_size, s.model, s.seed))


def batch_runs_of(config) -> list[RunSpec]:
  """The runs of the batch-size sweep: every kind x batch size x seed, unclipped, grouped."""
  specs = [RunSpec(k, 'none', None, int(b), int(seed)) for k in config.kinds
           for b in config.batch_sizes for seed in config.seeds]
  return sorted(dict.fromkeys(specs), key=lambda s: (s.batch_size, s.model, s.seed))


def peak_lr(c, batch_size: int) -> float:
  """base_lr · B / 256 or base_lr · sqrt(B / 256), as `c.lr_scaling` says."""
  ratio = batch_size / 256
  return float(c.base_lr) * (ratio if c.lr_scaling == 'linear' else math.sqrt(ratio))


def clipped_optimizer(opt_config, **sizes) -> optax.GradientTransformation:
  """Global-norm clip, then AGC (both thresholds traced), then `optim.create(opt_config)` unclipped.

  The thresholds live in the state as `opt_state.hyperparams['global_norm']` / `['agc']`
  (see `set_thresholds`); DISABLED turns a clip off.
  """
  rest = optim.create(dict(opt_config, clipping=None), **sizes)
  eps = float(opt_config.get('clip_eps', 1e-3))

  def chain(global_norm, agc_threshold):
    return optax.chain(
        optax.clip_by_global_norm(global_norm),
        optax.masked(agc.adaptive_grad_clip(agc_threshold, eps, report=True), optim.clip_mask),
        rest)

  return optax.inject_hyperparams(chain)(global_norm=DISABLED, agc_threshold=DISABLED)


def thresholds(spec: RunSpec) -> dict:
  """The traced hyperparameters of `clipped_optimizer` for a run."""
  return {'global_norm': spec.clipping if spec.clip_mode == 'global_norm' else DISABLED,
          'agc_threshold': spec.clipping if spec.clip_mode == 'agc' else DISABLED}


def set_thresholds(state, values: dict):
  """Returns `state` with the optimizer's clipping hyperparameters replaced (leading device axis kept)."""
  hp = dict(state.opt_state.hyperparams)
  for k, v in values.items():
    hp[k] = jnp.full_like(hp[k], v)
  return state._replace(opt_state=state.opt_state._replace(hyperparams=hp))


def _one_device(tree):
  """Host tree -> leading device axis of size 1 on the first local device (pmap input)."""
  device = jax.local_devices()[0]
  return jax.tree.map(lambda x: jax.device_put(np.asarray(x)[None], device), tree)


class _Group:
  """The compiled init/train/eval functions of one (model, batch size): every run in it reuses them.

  `shared` holds what one model shares across batch sizes (compiled once): the eval step, and the
  initial state, which depends on neither the batch size nor the learning rate.
  """

  def __init__(self, c, info, kind: str, batch_size: int, shared: dict):
    name = c[f'{kind}_model']
    kwargs = c.model_kwargs.to_dict()
    kwargs['drop_rate'] = 0.0
    if kind != 'bn':
      kwargs['stochdepth_rate'] = 0.0
    self.model = models.create(name, num_classes=info.num_classes, **kwargs)
    self.name = name
    # The eval batch is the same for every batch size: one eval compile per model.
    first = kind not in shared
    if first:
      shared[kind] = {'eval': eval_lib.make_eval_step(self.model)}
    self.eval_step = shared[kind]['eval']
    n = info.splits[info.train_split]
    self.steps_per_epoch = n / batch_size
    self.total_steps = int(c.steps)
    self.peak_lr = peak_lr(c, batch_size)
    # optim scales its lr by B / 256; warm-up is given to it in epochs.
    opt_config = dict(lr=self.peak_lr * 256 / batch_size,
                      warmup_epochs=int(c.warmup_steps) / self.steps_per_epoch,
                      weight_decay=float(c.weight_decay))
    sizes = dict(global_batch_size=batch_size, total_steps=self.total_steps,
                 steps_per_epoch=self.steps_per_epoch)
    optimizer = clipped_optimizer(opt_config, **sizes)
    schedule = optim.create_schedule(dict(opt_config, clipping=None), **sizes)
    if first:
      shared[kind]['init'] = jax.jit(lambda rng: init_state(
          self.model, optimizer, rng, (1, c.image_size, c.image_size, 3)))
    self.init = shared[kind]['init']
    step = make_train_step(self.model, optimizer, schedule=schedule,
                           num_classes=info.num_classes, label_smoothing=0.0, bf16=False,
                           ema_decay=0.0, augment='none')
    self.train_step = pmap_train_step(step)


def train_run(c, info, group: _Group, spec: RunSpec, *,
              log: Callable[[str, int, float], None]) -> dict:
  """Trains one run from scratch; stops early and records `diverged` when the loss turns NaN/Inf."""
  wall0, cpu0 = time.perf_counter(), time.process_time()
  rng = jax.random.PRNGKey(spec.seed)
  state = set_thresholds(_one_device(jax.device_get(group.init(rng))), thresholds(spec))
  batches = data_lib.train_iterator(
      c.dataset, data_dir=c.data_dir, global_batch_size=spec.batch_size,
      image_size=int(c.image_size), augment='none', seed=spec.seed,
      process_index=0, process_count=1, local_devices=1)
  diverged_step, losses, pending, clipped = None, [], [], []
  step = 0
  while step < group.total_steps:
    state, metrics = group.train_step(state, next(batches))
    step += 1
    pending.append((metrics['loss'], metrics.get('clip_fraction', metrics['loss'])))
    if step % int(c.check_every) == 0 or step == group.total_steps:
      fetched = jax.device_get(pending)
      values = [float(np.asarray(v)[0]) for v, _ in fetched]
      clipped += [float(np.asarray(f)[0]) for _, f in fetched]
      pending.clear()
      for offset, v in enumerate(values):
        if not math.isfinite(v) and diverged_step is None:
          diverged_step = step - len(values) + offset + 1
      losses += values
      log(f'step {step}/{group.total_steps} loss {values[-1]:.4f}', step, values[-1])
      if diverged_step is not None:
        break
  result = dataclasses.asdict(spec)
  result.update(label=spec.label, model_name=group.name, peak_lr=group.peak_lr,
                steps=group.total_steps, steps_run=step,
                epochs=step * spec.batch_size / info.splits[info.train_split],
                diverged=diverged_step is not None, diverged_step=diverged_step,
                final_train_loss=losses[-1] if math.isfinite(losses[-1]) else None,
                # Fraction of AGC's units clipped, averaged over the steps (None without AGC).
                mean_clip_fraction=(float(np.nanmean(clipped)) if spec.clip_mode == 'agc'
                                    and np.isfinite(clipped).any() else None))
  if diverged_step is None:
    batches = data_lib.eval_iterator(
        c.dataset, data_dir=c.data_dir, split=info.eval_split, global_batch_size=256,
        image_size=int(c.image_size), process_index=0, process_count=1, local_devices=1)
    ev = eval_lib.evaluate(group.eval_step, state.params, state.model_state, batches)
    result.update(eval_top1=ev['top1'], eval_loss=ev['loss'], eval_examples=ev['num_examples'])
  else:
    result.update(eval_top1=None, eval_loss=None, eval_examples=0)
  result.update(wall_s=time.perf_counter() - wall0, cpu_s=time.process_time() - cpu0)
  return result


def _print(message: str) -> None:
  print(message, flush=True)


def run_sweep(config, out_dir: str, *, printer: Callable[[str], None] = _print) -> dict:
  """Runs the AGC ablation of `config`, writes OUT/agc_ablation.json and .png; returns the JSON."""
  c = _config(config)
  return _run_all(c, runs_of(c), out_dir, 'agc_ablation', plot, printer)


def run_batch_sweep(config, out_dir: str, *, printer: Callable[[str], None] = _print) -> dict:
  """Runs the batch-size sweep of `config` (`batch_size_config`), writes
  OUT/batch_size_robustness.json and .png; returns the JSON."""
  c = _config(config)
  return _run_all(c, batch_runs_of(c), out_dir, 'batch_size_robustness', plot_batch_sweep, printer)


def _config(config) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict(config.to_dict() if hasattr(config, 'to_dict') else dict(config))
  check_config(c)
  return c


def _run_all(c, specs, out_dir, stem, plot_fn, printer) -> dict:
  info = data_lib.get_info(c.dataset, c.data_dir)
  n = info.splits[info.train_split]
  work = [int(c.steps) * s.batch_size for s in specs]
  wall0, cpu0 = time.perf_counter(), time.process_time()
  results, groups, shared = [], {}, {}
  done_work = 0
  scaling = 'B / 256' if c.lr_scaling == 'linear' else 'sqrt(B / 256)'
  printer(f'{len(specs)} runs on {info.name} ({n} training examples, {c.image_size}px, '
          f'{c.steps} steps each, lr = {c.base_lr:g} * {scaling}); load average '
          f'{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs')
  last_print = [0.0]
  for i, spec in enumerate(specs):
    key = (spec.model, spec.batch_size)
    if key not in groups:
      groups.clear()  # one group alive at a time: specs are sorted by group
      groups[key] = _Group(c, info, spec.model, spec.batch_size, shared)
    group = groups[key]
    prefix = (f'run {i + 1}/{len(specs)} [{spec.label}, B={spec.batch_size}, '
              f'lr={group.peak_lr:.4g}, seed {spec.seed}]')

    def log(message, step, _loss, prefix=prefix, spec=spec, done=done_work):
      now = time.perf_counter()
      finished = step == group.total_steps
      if now - last_print[0] < 5.0 and not finished:
        return
      last_print[0] = now
      progress = done + step * spec.batch_size
      eta = (now - wall0) / max(progress, 1) * (sum(work) - progress)
      printer(f'{prefix} {message} | elapsed {now - wall0:.0f}s, ETA {eta:.0f}s')

    result = train_run(c, info, group, spec, log=log)
    done_work += work[i]
    results.append(result)
    outcome = ('DIVERGED at step %d' % result['diverged_step'] if result['diverged']
               else f'eval top-1 {result["eval_top1"]:.4f}')
    printer(f'{prefix} {outcome} ({result["wall_s"]:.1f}s wall, {result["cpu_s"]:.1f}s CPU)')
  summary = {
      'config': c.to_dict(), 'dataset': info.name, 'eval_split': info.eval_split,
      'num_train_examples': n, 'devices_per_run': 1, 'runs': results,
      'wall_s': time.perf_counter() - wall0, 'cpu_s': time.process_time() - cpu0,
      'load_average_end': list(os.getloadavg()), 'cpu_count': os.cpu_count(),
      'jax_backend': jax.default_backend(),
  }
  summary['config']['model_kwargs']['depth'] = list(c.model_kwargs.depth)
  paths.write_text(paths.join(out_dir, f'{stem}.json'), json.dumps(summary, indent=2) + '\n')
  plot_fn(summary, paths.join(out_dir, f'{stem}.png'))
  printer(f'wrote {out_dir}/{stem}.json and {out_dir}/{stem}.png '
          f'({summary["wall_s"]:.0f}s wall, {summary["cpu_s"]:.0f}s CPU)')
  return summary


def _plot_series(ax, xs, ys, diverged, *, chance, label, **style):
  """A line of accuracies, and an × at chance level for every diverged run."""
  ax.plot(xs, ys, label=label, **style)  # even when empty: the legend then explains the ×s
  if diverged:
    ax.scatter(diverged, [chance] * len(diverged), marker='x', s=90, color=style['color'], zorder=5)


def _series(runs: Iterable[dict], xs_allowed, x: str = 'batch_size', **match) -> tuple[list, list, list]:
  """(values of `x`, mean top-1 over the seeds that did not diverge, values of `x` where some seed
  diverged) of the runs matching `match`."""
  picked = {}
  for r in runs:
    if all(r[k] == v for k, v in match.items()) and r[x] in xs_allowed:
      picked.setdefault(r[x], []).append(r)
  ok = {b: [r['eval_top1'] for r in rs if not r['diverged']] for b, rs in picked.items()}
  xs = sorted(b for b, accs in ok.items() if accs)
  return xs, [100 * float(np.mean(ok[b])) for b in xs], sorted(
      b for b, rs in picked.items() if any(r['diverged'] for r in rs))


def _log2_axis(ax) -> None:
  import matplotlib.ticker  # pylint: disable=import-outside-toplevel
  ax.set_xscale('log', base=2)
  ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter('%g'))


def plot(summary: dict, path: str) -> None:
  """Three panels: top-1 vs batch size per clipping; top-1 vs AGC threshold; NF vs BN sensitivity."""
  matplotlib = extras.require('matplotlib', 'the ablation plot')
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  c, runs = summary['config'], summary['runs']
  chance = 100.0 / 10 if summary['dataset'] == 'digits' else 0.0
  fig, axes = plt.subplots(1, 3, figsize=(17, 5.2))
  ax = axes[0]
  ablation_b = set(c['batch_sizes'])
  lines = [dict(model='nf', clip_mode='none'), dict(model='nf', clip_mode='global_norm')]
  lines += [dict(model='nf', clip_mode='agc', clipping=float(t)) for t in c['agc_thresholds']]
  lines.append(dict(model='bn'))
  cmap = plt.get_cmap('viridis')
  n_agc = len(c['agc_thresholds'])
  for k, match in enumerate(lines):
    if match['model'] == 'bn':
      style = dict(color='black', ls='--', marker='s')
    elif match['clip_mode'] == 'none':
      style = dict(color='tab:red', marker='o', lw=2)
    elif match['clip_mode'] == 'global_norm':
      style = dict(color='tab:orange', marker='^')
    else:
      style = dict(color=cmap((k - 2) / max(n_agc - 1, 1) * 0.9), marker='o', ms=4)
    label = next((r['label'] for r in runs if all(r[q] == v for q, v in match.items())), None)
    if label is None:
      continue
    _plot_series(ax, *_series(runs, ablation_b, **match), chance=chance, label=label, **style)
  _log2_axis(ax)
  ax.set_xlabel('batch size B (lr = %g · B / 256, %d steps)' % (c['base_lr'], c['steps']))
  ax.set_ylabel(f'{summary["eval_split"]} top-1 (%)')
  ax.set_title('AGC ablation: NF-ResNet clipping vs BN-ResNet\n(× = diverged, drawn at chance)')
  ax.legend(fontsize=7, loc='best')
  ax.grid(alpha=0.3)

  ax = axes[1]
  for j, b in enumerate(sorted(ablation_b)):
    color = plt.get_cmap('plasma')(j / max(len(ablation_b) - 1, 1) * 0.85)
    _plot_series(ax, *_series(runs, {float(t) for t in c['agc_thresholds']}, x='clipping',
                              model='nf', clip_mode='agc', batch_size=b),
                 chance=chance, label=f'B={b}', color=color, marker='o')
  _log2_axis(ax)
  ax.set_xticks(sorted(float(t) for t in c['agc_thresholds']))
  ax.set_xticks([], minor=True)
  ax.set_xlabel('AGC clipping threshold λ')
  ax.set_ylabel(f'{summary["eval_split"]} top-1 (%)')
  ax.set_title('NF-ResNet with AGC: top-1 vs threshold per batch size')
  ax.legend(fontsize=8)
  ax.grid(alpha=0.3)

  ax = axes[2]
  sens_b = set(c['sensitivity_batch_sizes']) | ablation_b
  smallest = float(min(c['agc_thresholds']))
  for match, style, label in ((dict(model='nf', clip_mode='none'), dict(color='tab:red', marker='o'),
                               'NF-ResNet (no clipping)'),
                              (dict(model='nf', clip_mode='agc', clipping=smallest),
                               dict(color='tab:blue', marker='o'), f'NF-ResNet, AGC λ={smallest:g}'),
                              (dict(model='bn'), dict(color='black', marker='s', ls='--'),
                               'BN-ResNet')):
    _plot_series(ax, *_series(runs, sens_b, **match), chance=chance, label=label, **style)
  _log2_axis(ax)
  ax.set_xlabel('batch size per device (lr = %g · B / 256)' % c['base_lr'])
  ax.set_ylabel(f'{summary["eval_split"]} top-1 (%)')
  ax.set_title('Batch-size sensitivity: NF-ResNet vs BN-ResNet')
  ax.legend(fontsize=8)
  ax.grid(alpha=0.3)
  fig.suptitle(f'{summary["dataset"]}, {c["image_size"]}px, {c["nf_model"]}/{c["bn_model"]} '
               f'{tuple(c["model_kwargs"]["depth"])} width {c["model_kwargs"]["width"]}, '
               f'{c["steps"]} steps at every batch size, one device per run; mean top-1 of '
               f'{len(c["seeds"])} seed(s), a seed that diverged is left out of the mean', fontsize=10)
  fig.tight_layout()
  paths.write_figure(path, fig, dpi=110)


def plot_batch_sweep(summary: dict, path: str) -> None:
  """Top-1 vs batch size per model (mean over seeds, each seed as a dot; × = diverged)."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  c, runs = summary['config'], summary['runs']
  chance = 100.0 / 10 if summary['dataset'] == 'digits' else 0.0
  styles = {'bn': dict(color='black', ls='--', marker='s'), 'nf': dict(color='tab:blue', marker='o'),
            'skipinit': dict(color='tab:green', marker='^'),
            'fixup': dict(color='tab:purple', marker='D')}
  fig, ax = plt.subplots(figsize=(8, 5.2))
  for kind in c['kinds']:
    _plot_series(ax, *_series(runs, set(c['batch_sizes']), model=kind), chance=chance,
                 label=LABELS[kind], **styles[kind])
    dots = [(r['batch_size'], 100 * r['eval_top1']) for r in runs
            if r['model'] == kind and not r['diverged']]
    if dots:
      ax.scatter(*zip(*dots), s=10, alpha=0.5, color=styles[kind]['color'])
  _log2_axis(ax)
  scaling = 'B / 256' if c['lr_scaling'] == 'linear' else 'sqrt(B / 256)'
  ax.set_xlabel(f'batch size B (lr = {c["base_lr"]:g} · {scaling}, {c["steps"]} steps at every B)')
  ax.set_ylabel(f'{summary["eval_split"]} top-1 (%)')
  ax.set_title(f'Batch-size robustness, {len(c["seeds"])} seeds (line: mean; dots: seeds; '
               f'× = diverged)', fontsize=10)
  ax.legend(fontsize=8)
  ax.grid(alpha=0.3)
  fig.suptitle(f'{summary["dataset"]}, {c["image_size"]}px, ResNet-50 layout '
               f'{tuple(c["model_kwargs"]["depth"])} width {c["model_kwargs"]["width"]}, '
               f'one device per run', fontsize=9)
  fig.tight_layout()
  paths.write_figure(path, fig, dpi=110)
