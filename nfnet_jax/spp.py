"""Signal propagation plots (Brock, De & Smith 2021, "Characterizing signal propagation to
close the performance gap in unnormalized ResNets", sec. 3).

For each model, the statistics of the residual stream after every block on one batch:
  avg_sq_mean  mean over channels of the squared per-channel mean over (N, H, W),
  avg_var      mean over channels of the per-channel variance,
  res_avg_var  avg_var of the residual branch output, before it is added to the stream,
drawn against block depth, models overlaid, with stage transitions marked.

Models are given as 'name' or 'name:key=value,key=value' (constructor overrides), e.g.
'resnet600:block_order=relu_bn_conv' or 'nf_resnet600:use_ws=False'.
"""
from __future__ import annotations

import ast
import csv
import dataclasses
import inspect
import io
import json
from collections.abc import Mapping, Sequence
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from nfnet_jax import extras
from nfnet_jax import models
from nfnet_jax import paths as paths_lib

STAT_KEYS = ('avg_sq_mean', 'avg_var', 'res_avg_var')
_TITLES = {'avg_sq_mean': 'Average squared channel mean',
           'avg_var': 'Average channel variance',
           'res_avg_var': 'Residual branch: average channel variance'}
# Options switched off for a measurement at initialisation: stochastic regularisers (they
# would make the statistics random) and, unless told otherwise, the zero-initialised SkipInit
# gain (with g = 0 every residual branch is silent and the stream never changes).
_REGULARISERS = {'drop_rate': 0.0, 'stochdepth_rate': 0.0}


@dataclasses.dataclass(frozen=True)
class ModelChoice:
  """One curve of the plot: a registered model name, constructor overrides and a label."""
  name: str
  overrides: Mapping[str, Any]
  label: str


def _parse_value(text: str) -> Any:
  low = text.strip().lower()
  if low in ('true', 'false'):
    return low == 'true'
  if low == 'none':
    return None
  try:
    return ast.literal_eval(text.strip())
  except (ValueError, SyntaxError):
    return text.strip()


def parse_model(text: str) -> ModelChoice:
  """'resnet600:block_order=relu_bn_conv,width=2' -> ModelChoice; bad names/options raise."""
  name, _, rest = text.partition(':')
  name = name.strip()
  models.get_spec(name)  # ValueError listing the valid names
  overrides = {}
  if rest.strip():
    # Split on commas that start a new 'key=' (values such as depth=(1,2,2,1) contain commas).
    parts, current = [], ''
    for piece in rest.split(','):
      if '=' in piece and current and current.count('(') == current.count(')'):
        parts.append(current)
        current = piece
      else:
        current = f'{current},{piece}' if current else piece
    parts.append(current)
    for part in parts:
      key, eq, value = part.partition('=')
      if not eq or not key.strip():
        raise ValueError(f'Bad model option {part!r} in {text!r}; write name:key=value,key=value.')
      overrides[key.strip()] = _parse_value(value)
  return ModelChoice(name=name, overrides=overrides, label=text.strip())


def _options(name: str) -> set[str]:
  return set(inspect.signature(models.get_spec(name).constructor).parameters)


def gaussian_images(batch: int, image_size: int, seed: int = 0) -> np.ndarray:
  """Unit Gaussian noise [batch, size, size, 3], the paper's default input."""
  if batch < 2 or image_size < 1:
    raise ValueError(f'need batch >= 2 (statistics are taken over the batch) and a positive '
                     f'image size, got batch={batch}, image_size={image_size}.')
  return np.random.default_rng(seed).standard_normal((batch, image_size, image_size, 3),
                                                     dtype=np.float32)


def dataset_images(dataset: str, *, batch: int, image_size: int, data_dir: Optional[str] = None,
                   split: Optional[str] = None) -> np.ndarray:
  """The first `batch` evaluation-preprocessed images of a dataset split (normalised)."""
  from nfnet_jax import data  # pylint: disable=import-outside-toplevel
  info = data.get_info(dataset, data_dir)
  split = split or info.eval_split
  it = data.eval_iterator(dataset, data_dir=data_dir, split=split, global_batch_size=batch,
                          image_size=image_size, process_index=0, process_count=1,
                          local_devices=1)
  first = next(iter(it))
  images = np.asarray(first['images']).reshape((-1, image_size, image_size, 3))
  images = images[np.asarray(first['mask']).reshape(-1)]
  if len(images) < 2:
    raise ValueError(f'{dataset}:{split} gave {len(images)} images; need at least 2.')
  return images.astype(np.float32)


def measure(choice: ModelChoice, images: np.ndarray, *, seed: int = 0,
            params: Any = None, state: Any = None,
            skipinit_gain: Optional[float] = 1.0) -> dict:
  """Per-block statistics of one model on `images`, at init (params=None) or given weights.

  The forward pass runs in training mode, so BatchNorm normalises with the batch's own
  statistics as at the start of training; dropout and stochastic depth are switched off.
  At init, models with a SkipInit gain get `skipinit_gain` (None keeps the model's own init).
  Returns {'label', 'model', 'overrides', 'block', 'transition', *STAT_KEYS} with lists.
  """
  opts = _options(choice.name)
  overrides = {k: v for k, v in _REGULARISERS.items() if k in opts}
  if params is None and skipinit_gain is not None and 'skipinit_gain' in opts:
    overrides['skipinit_gain'] = float(skipinit_gain)
  overrides.update(choice.overrides)
  model = models.create(choice.name, **overrides)
  spec = models.get_spec(choice.name)
  images = jnp.asarray(images, jnp.float32)
  if min(images.shape[1:3]) < spec.min_image_size:
    raise ValueError(f'{choice.name} needs images of at least {spec.min_image_size} px, '
                     f'got {images.shape[1]}x{images.shape[2]}.')

  def signal(params, state, images):
    out, _ = model.apply(params, state, None, images, True, True)
    return out['signal']

  # Op by op, not jitted: deep nets repeat a few block shapes, so eager dispatch reuses
  # compiled kernels while a whole-graph compile of a 600-layer net takes minutes.
  if params is None:
    params, state = model.init(jax.random.PRNGKey(seed), images)
  sig = jax.device_get(signal(params, state if state is not None else {}, images))
  record = {'label': choice.label, 'model': choice.name,
            'overrides': {k: v for k, v in overrides.items() if _jsonable(v)},
            'block': list(range(1, len(sig['transition']) + 1)),
            'transition': [bool(t) for t in sig['transition']]}
  for key in STAT_KEYS:
    record[key] = [float(v) for v in sig[key]]
  return record


def _jsonable(v) -> bool:
  try:
    json.dumps(v)
    return True
  except TypeError:
    return False


def plot(records: Sequence[Mapping], path: str, *, title: Optional[str] = None,
         yscale: str = 'linear') -> str:
  """Three panels (avg_sq_mean, avg_var, res_avg_var) vs block depth, models overlaid.

  Stage transitions (of any of the models) are marked with dotted grey vertical lines.
  """
  matplotlib = extras.require('matplotlib', 'signal propagation plots')
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  if yscale not in ('linear', 'log'):
    raise ValueError(f"yscale must be 'linear' or 'log', got {yscale!r}.")
  fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
  transitions = sorted({b for rec in records
                        for b, t in zip(rec['block'], rec['transition']) if t and b > 1})
  for ax, key in zip(axes, STAT_KEYS):
    for b in transitions:
      ax.axvline(b - 0.5, color='0.4', ls=':', lw=0.9)
    for rec in records:
      ax.plot(rec['block'], rec[key], lw=1.4, label=rec['label'])
  for ax, key in zip(axes, STAT_KEYS):
    ax.set_title(_TITLES[key], fontsize=10)
    ax.set_xlabel('Residual block (dotted: stage transition)')
    ax.set_yscale(yscale)
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=8)
  if title:
    fig.suptitle(title, fontsize=11)
  fig.tight_layout()
  paths_lib.write_figure(path, fig, dpi=90)
  return path


def save(records: Sequence[Mapping], out_dir: str, *, name: str = 'spp',
         meta: Optional[Mapping] = None, title: Optional[str] = None,
         yscale: str = 'linear') -> dict[str, str]:
  """Writes NAME.png, NAME.json ({'meta', 'models': records}) and NAME.csv (one row per block)."""
  paths = {ext: paths_lib.join(out_dir, f'{name}.{ext}') for ext in ('png', 'json', 'csv')}
  plot(records, paths['png'], title=title, yscale=yscale)
  paths_lib.write_text(paths['json'], json.dumps(
      {'meta': dict(meta or {}), 'models': list(records)}, indent=1) + '\n')
  rows = io.StringIO(newline='')
  writer = csv.writer(rows)
  writer.writerow(['label', 'model', 'block', 'transition', *STAT_KEYS])
  for rec in records:
    for j, b in enumerate(rec['block']):
      writer.writerow([rec['label'], rec['model'], b, int(rec['transition'][j]),
                       *(repr(rec[k][j]) for k in STAT_KEYS)])
  paths_lib.write_text(paths['csv'], rows.getvalue())
  return paths


def load_weights(choice: ModelChoice, *, workdir: Optional[str] = None,
                 pretrained: Optional[str] = None, ema: bool = False) -> tuple[Any, Any]:
  """(params, model_state) of a training run's latest checkpoint or of a params file."""
  if workdir is not None:
    from nfnet_jax.train import checkpoints  # pylint: disable=import-outside-toplevel
    ckpt = checkpoints.Checkpointer(workdir, read_only=True)
    try:
      raw = ckpt.restore_raw()
    finally:
      ckpt.close()
    params = raw['ema_params' if ema else 'params']
    state = raw['ema_model_state' if ema else 'model_state'] or {}
    return params, state
  from nfnet_jax import pretrained as pretrained_lib  # pylint: disable=import-outside-toplevel
  from nfnet_jax.interop import timm as timm_interop  # pylint: disable=import-outside-toplevel
  if timm_interop.is_timm_file(pretrained):
    return timm_interop.from_timm(pretrained, choice.name, **choice.overrides), {}
  return pretrained_lib.load(pretrained), {}


def run(model_texts: Sequence[str], out_dir: str, *, image_size: int = 224, batch: int = 64,
        seed: int = 0, dataset: Optional[str] = None, data_dir: Optional[str] = None,
        split: Optional[str] = None, workdir: Optional[str] = None,
        pretrained: Optional[str] = None, ema: bool = False,
        skipinit_gain: Optional[float] = 1.0, name: str = 'spp',
        yscale: str = 'linear', log=print) -> dict[str, str]:
  """Measures every model on one batch and saves the PNG/JSON/CSV; returns their paths."""
  if not model_texts:
    raise ValueError('give at least one model, e.g. --model nf_resnet600.')
  choices = [parse_model(t) for t in model_texts]
  for c in choices:  # unknown options or bad values fail here, before any compile
    models.create(c.name, **c.overrides)
  if workdir is not None and pretrained is not None:
    raise ValueError('give at most one of --workdir and --pretrained.')
  weights = None
  if workdir is not None or pretrained is not None:
    if len(choices) != 1:
      raise ValueError('--workdir/--pretrained weights belong to one model: give exactly one '
                       '--model.')
    weights = load_weights(choices[0], workdir=workdir, pretrained=pretrained, ema=ema)
  if dataset is not None:
    from nfnet_jax import data  # pylint: disable=import-outside-toplevel
    split = split or data.get_info(dataset, data_dir).eval_split
    images = dataset_images(dataset, batch=batch, image_size=image_size, data_dir=data_dir,
                            split=split)
    source = f'{dataset}:{split}'
  else:
    images = gaussian_images(batch, image_size, seed)
    source = 'N(0, 1) noise'
  records = []
  for c in choices:
    log(f'measuring {c.label} on {len(images)} x {image_size}px ({source}) ...')
    params, state = weights if weights is not None else (None, None)
    records.append(measure(c, images, seed=seed, params=params, state=state,
                           skipinit_gain=skipinit_gain))
  meta = {'image_size': image_size, 'batch': int(len(images)), 'input': source, 'seed': seed,
          'weights': workdir or pretrained or 'init', 'skipinit_gain_at_init': skipinit_gain}
  title = (f'Signal propagation, {"initialisation" if weights is None else meta["weights"]}, '
           f'{source}, batch {len(images)}, {image_size}px')
  return save(records, out_dir, name=name, meta=meta, title=title, yscale=yscale)
