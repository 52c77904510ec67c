"""Evaluation over whole splits with exact counts: top-1, top-5, loss and the number of examples.

Padding examples (mask False) contribute nothing; sums are taken per device, added on the host in
float64 and across processes at the end, so every example of the split is counted exactly once.
The eval sets of a run (config.evals: validation, ImageNet-ReaL, ImageNet-V2, ...) are in
nfnet_jax/evals.py; `evaluate_sets` scores them all, `evaluate_run` is scripts/evaluate.py.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from nfnet_jax import data as data_lib
from nfnet_jax import precision
from nfnet_jax import evals as evals_lib
from nfnet_jax import paths as paths_lib
from nfnet_jax.train import build as build_lib
from nfnet_jax.train import checkpoints
from nfnet_jax.train import config as config_lib
from nfnet_jax.train.step import cast_floating, smoothed_cross_entropy, topk_correct

_SUMS = ('loss', 'top1', 'top5', 'num_examples')
_DEVICE_KEYS = ('images', 'labels', 'mask')


def make_eval_step(model, *, bf16: bool = False, cpu_bf16: bool = False) -> Callable:
  """Returns a pmapped fn(params, model_state, batch) -> per-device sums of loss/top1/top5/count,
  and per example the five most probable classes ('top5', best first) and their 'top5_prob'.

  `bf16` computes in bfloat16 except on CPU, where only `cpu_bf16` does; there the convolutions
  take bf16 products where oneDNN has bf16 kernels (`nfnet_jax.precision`).
  """
  dtype = precision.compute_dtype(bf16, cpu_bf16=cpu_bf16)

  def eval_step(params, model_state, batch):
    with precision.scope(bf16, cpu_bf16=cpu_bf16):
      outputs, _ = model.apply(cast_floating(params, dtype), model_state, None,
                               batch['images'].astype(dtype), is_training=False)
    logits = outputs['logits'].astype(jnp.float32)
    labels = batch['labels']
    mask = batch['mask'].astype(jnp.float32)
    one_hot = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32)
    top_prob, top_class = jax.lax.top_k(jax.nn.softmax(logits), min(5, logits.shape[-1]))
    return {'loss': jnp.sum(mask * smoothed_cross_entropy(logits, one_hot, 0.0)),
            'top1': jnp.sum(mask * topk_correct(logits, labels, 1)),
            'top5': jnp.sum(mask * topk_correct(logits, labels, 5)),
            'num_examples': jnp.sum(mask), 'top5_classes': top_class, 'top5_prob': top_prob}

  return jax.pmap(eval_step, axis_name='batch')


def replicate(tree: Any) -> Any:
  """Copies a host pytree onto every local device (leading axis = local devices), as pmap takes it."""
  devices = jax.local_devices()
  sharding = NamedSharding(Mesh(np.array(devices), ('batch',)), PartitionSpec('batch'))
  return jax.tree.map(
      lambda x: jax.device_put(np.broadcast_to(np.asarray(x), (len(devices),) + np.shape(x)),
                               sharding), tree)


def _allgather_rows(local: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Concatenates every process's rows (in process order); shards may differ in length."""
  if jax.process_count() == 1:
    return local
  counts = np.asarray(multihost_utils.process_allgather(np.array(len(local['index']), np.int32)))
  longest = int(counts.max())
  out = {}
  for key, rows in local.items():
    padded = np.zeros((longest,) + rows.shape[1:], rows.dtype)
    padded[:len(rows)] = rows
    gathered = np.asarray(multihost_utils.process_allgather(padded))
    out[key] = np.concatenate([gathered[p, :n] for p, n in enumerate(counts)])
  return out


def _encode(names: list[bytes]) -> np.ndarray:
  """File names as a [n, width] uint8 array, width agreed by all processes (for the allgather)."""
  width = max([len(n) for n in names] + [1])
  if jax.process_count() > 1:
    width = int(np.max(multihost_utils.process_allgather(np.array(width, np.int32))))
  out = np.zeros((len(names), width), np.uint8)
  for i, n in enumerate(names):
    out[i, :len(n)] = np.frombuffer(n, np.uint8)
  return out


def _gather_predictions(parts: list[dict], num_examples: int, num_classes: int) -> dict:
  """Every process's predictions, sorted by index; checks each example of the split is there once."""
  local = {k: np.concatenate([p[k] for p in parts]) for k in parts[0] if k != 'file'}
  if 'file' in parts[0]:
    local['file'] = _encode([f for p in parts for f in p['file']])
  if 'label_set' in local:
    local['label_set'] = np.packbits(local['label_set'], axis=1)
  preds = _allgather_rows(local)
  order = np.argsort(preds['index'], kind='stable')
  preds = {k: v[order] for k, v in preds.items()}
  if not np.array_equal(preds['index'], np.arange(num_examples)):
    raise RuntimeError(f'predictions cover {len(np.unique(preds["index"]))} distinct of {num_examples} '
                       f'examples in {len(preds["index"])} rows; the eval input is broken.')
  if 'file' in preds:
    preds['file'] = [bytes(row[row > 0]).decode() for row in preds['file']]
  if 'label_set' in preds:
    preds['label_set'] = np.unpackbits(preds['label_set'], axis=1, count=num_classes).astype(bool)
  return preds


def evaluate(p_eval_step: Callable, params: Any, model_state: Any, batches: Iterable[dict], *,
             predictions: bool = False) -> dict:
  """Scores every batch; params/model_state are replicated. Returns means and num_examples.

  Batches with a 'label_set' (ImageNet-ReaL) are scored against it: top-1/top-5 count as correct
  when a predicted class is in the set; empty sets are left out and counted in num_excluded.
  predictions=True also returns 'predictions' (index, labels, top5, top5_prob, file, label_set of
  every example of the split, in split order, on every process).
  """
  totals = np.zeros(len(_SUMS), np.float64)
  real = None      # ReaL top-1 hits, top-5 hits, excluded
  parts = []
  num_classes = None
  for batch in batches:
    out = jax.device_get(p_eval_step(params, model_state, {k: batch[k] for k in _DEVICE_KEYS}))
    totals += np.array([np.sum(np.asarray(out[k], np.float64)) for k in _SUMS])
    mask = np.asarray(batch['mask']).reshape(-1)
    k = out['top5_classes'].shape[-1]
    top5 = np.asarray(out['top5_classes']).reshape(-1, k)[mask]
    if 'label_set' in batch:
      sets = np.asarray(batch['label_set'])
      num_classes = sets.shape[-1]
      sets = sets.reshape(-1, num_classes)[mask]
      hits = np.take_along_axis(sets, top5, axis=1)
      empty = ~sets.any(axis=1)
      batch_real = np.array([hits[:, 0].sum(), hits.any(axis=1).sum(), empty.sum()], np.float64)
      real = batch_real if real is None else real + batch_real
    if predictions:
      part = {'index': np.asarray(batch['index']).reshape(-1)[mask].astype(np.int32),
              'labels': np.asarray(batch['labels']).reshape(-1)[mask].astype(np.int32),
              'top5': top5.astype(np.int32),
              'top5_prob': np.asarray(out['top5_prob'], np.float32).reshape(-1, k)[mask]}
      if 'file' in batch:
        part['file'] = [bytes(f) for f in np.asarray(batch['file']).reshape(-1)[mask]]
      if 'label_set' in batch:
        part['label_set'] = sets
      parts.append(part)
  if jax.process_count() > 1:
    totals = np.sum(multihost_utils.process_allgather(totals), axis=0)
    if real is not None:
      real = np.sum(multihost_utils.process_allgather(real), axis=0)
  count = totals[-1]
  if count == 0:
    raise ValueError('the evaluation split yielded no examples.')
  if real is not None:
    scored = count - real[2]
    result = {'top1': float(real[0] / scored) if scored else float('nan'),
              'top5': float(real[1] / scored) if scored else float('nan'),
              'num_examples': int(round(scored)), 'num_excluded': int(round(real[2]))}
  else:
    result = {k: float(v / count) for k, v in zip(_SUMS[:-1], totals[:-1])}
    result['num_examples'] = int(round(count))
  if predictions:
    result['predictions'] = _gather_predictions(parts, int(round(count)), num_classes or 0)
  return result


def evaluate_split(model, params: Any, model_state: Any, *, dataset: str, data_dir: str | None,
                   split: str, batch_size: int, image_size: int,
                   preprocess: str = 'resize_crop_32', bf16: bool = False,
                   p_eval_step: Callable | None = None, folder_val_fraction: float = 0.1) -> dict:
  """Evaluates unreplicated (host) params on a whole split of `dataset`."""
  p_eval_step = p_eval_step or make_eval_step(model, bf16=bf16)
  batches = data_lib.eval_iterator(dataset, data_dir=data_dir, split=split,
                                   global_batch_size=batch_size, image_size=image_size,
                                   preprocess=preprocess, folder_val_fraction=folder_val_fraction)
  return evaluate(p_eval_step, replicate(params), replicate(model_state), batches)


def evaluate_sets(p_eval_step: Callable, eval_sets: list, candidates: dict, *,
                  predictions: str | None = None) -> dict:
  """{set name: {candidate: metrics}} for replicated candidates {'params': (params, model_state), ...}.

  predictions: the candidate whose per-example predictions are returned under 'predictions'.
  """
  result = {}
  for eval_set in eval_sets:
    result[eval_set.name] = {
        which: evaluate(p_eval_step, params, model_state, evals_lib.batches(eval_set),
                        predictions=which == predictions)
        for which, (params, model_state) in candidates.items()}
  return result


def metrics_to_log(results: dict) -> dict:
  """{'NAME/params/top1': ..., 'NAME/ema_params/top1': ...} for the metric writers (prefix 'eval/')."""
  return {f'{name}/{which}/{k}': v for name, by in results.items() for which, m in by.items()
          for k, v in m.items() if k != 'predictions'}


def summary_lines(results: dict, eval_sets: list) -> list[str]:
  """One console line per eval set: top-1 of each candidate and the examples counted."""
  lines = []
  for s in eval_sets:
    by = results[s.name]
    first = next(iter(by.values()))
    scores = ', '.join(f'{"EMA " if w == "ema_params" else ""}top1 {m["top1"]:.4f}' for w, m in by.items())
    excluded = f' ({first["num_excluded"]} without labels left out)' if 'num_excluded' in first else ''
    lines.append(f'eval {s.name}: {scores} on {first["num_examples"]} {s.dataset} {s.split} examples '
                 f'at {s.image_size}px{excluded}')
  return lines


def write_json(result: dict, *paths: str | None) -> None:
  """Writes `result` as indented JSON to each given path (process 0 only)."""
  if jax.process_index() != 0:
    return
  for path in paths:
    if path:
      paths_lib.write_text(path, json.dumps(result, indent=2, sort_keys=True) + '\n')


def resolve_eval_sets(run: config_lib.Run, names: list[str] | None = None, *,
                      log: Callable[[str], None] | None = None) -> list:
  """The run's eval sets (evals.resolve with the model's sizes); ConfigError when one cannot run."""
  if log is None:
    log = print if jax.process_index() == 0 else (lambda _: None)
  try:
    return evals_lib.resolve(run.config, test_image_size=run.spec.test_image_size,
                             min_image_size=run.spec.min_image_size,
                             num_classes=run.info.num_classes, names=names, log=log)
  except evals_lib.EvalSetError as e:
    raise config_lib.ConfigError(str(e)) from None


def results_table(result: dict) -> str:
  """evaluate_run's result as the table scripts/evaluate.py prints (top-1/top-5 in %)."""
  lines = ['| eval set | data | size | top-1 | top-5 | EMA top-1 | EMA top-5 | examples |',
           '|---|---|---|---|---|---|---|---|']
  pct = lambda m, k: f'{100 * m[k]:.2f}' if m else '-'
  for name, r in result['evals'].items():
    p, e = r['params'], r.get('ema_params')
    excluded = f' (+{p["num_excluded"]} unlabelled)' if 'num_excluded' in p else ''
    lines.append(f'| {name} | {r["dataset"]} {r["split"]} | {r["image_size"]} | {pct(p, "top1")} | '
                 f'{pct(p, "top5")} | {pct(e, "top1")} | {pct(e, "top5")} | {p["num_examples"]}{excluded} |')
  return '\n'.join(lines)


def _output_paths(path: str, name: str, several: bool) -> tuple[str, str]:
  """(predictions JSONL, prefix for its per-class files) of one eval set."""
  stem = path[:-len('.jsonl')] if path.endswith('.jsonl') else path
  if several:
    stem = f'{stem}.{name}'
  return stem + '.jsonl', stem


def evaluate_run(config, *, workdir: str | None = None, pretrained: str | None = None,
                 evals: list[str] | None = None, image_sizes: list[int] | None = None,
                 predictions: str | None = None, out: str | None = None) -> dict:
  """Evaluates a run's latest checkpoint (params and EMA params) or a params file on its eval sets.

  Returns {'model', 'step', 'evals': {NAME: {dataset, split, image_size, preprocess,
  'params': {top1, top5, loss, num_examples}, 'ema_params': {...} (checkpoints only)}}}; with
  image_sizes, one entry 'NAME@SIZE' per set and size, and 'sweep' (a table of top-1 by size,
  also written as text and a PNG plot next to `out` or in the workdir). predictions: a JSONL file
  of the EMA params' (a params file's) top-5 for every example (one file per set when there are
  several) plus, for <= 100 classes, a per-class accuracy CSV and a confusion-matrix PNG. Writes the
  result as JSON to `out` and, for a workdir, to WORKDIR/eval.json.
  """
  from nfnet_jax import pretrained as pretrained_lib  # pylint: disable=import-outside-toplevel
  if (workdir is None) == (pretrained is None):
    raise ValueError('give exactly one of --workdir (a training run) or --pretrained (a params file).')
  if image_sizes and predictions:
    raise ValueError('--predictions is for one test size; drop --image_sizes or --predictions.')
  if image_sizes and not (out or workdir):
    raise ValueError('--image_sizes writes a table and a plot next to --out: give --out=FILE.json.')
  run = config_lib.validate(config, for_training=False)
  eval_sets = resolve_eval_sets(run, evals)
  if not eval_sets:
    raise ValueError('no eval set to score: every set in config.evals was skipped.')
  for size in image_sizes or ():
    if size < run.spec.min_image_size:
      raise ValueError(f'--image_sizes: {size} is too small for {config.model}: it needs at least '
                       f'{run.spec.min_image_size} pixels.')
  model, optimizer, _ = build_lib.build(run)
  init_fn = build_lib.initial_state_fn(run, model, optimizer)
  abstract = jax.eval_shape(init_fn, jax.random.PRNGKey(0))
  if workdir is not None:
    checkpointer = checkpoints.Checkpointer(workdir, read_only=True)
    if checkpointer.latest_step() is None:
      raise FileNotFoundError(f'no checkpoint in {checkpoints.checkpoint_dir(workdir)}; train first '
                              '(scripts/train.py with the same --workdir).')
    state, _ = checkpointer.restore(abstract)
    checkpointer.close()
    candidates = {'params': (state.params, state.model_state),
                  'ema_params': (state.ema_params, state.ema_model_state)}
    step = int(state.step)
  else:
    if jax.tree.leaves(abstract.model_state):
      raise ValueError(f'{config.model} has model state (BatchNorm statistics) that a params file '
                       'does not hold; evaluate its training run with --workdir instead.')
    params = pretrained_lib.load(pretrained, like=abstract.params)
    candidates = {'params': (jax.tree.map(np.asarray, params), {})}
    step = None
  for name, (params, _) in candidates.items():
    check_finite_params(params, f'{workdir or pretrained} ({name})')
  candidates = {k: (replicate(p), replicate(s)) for k, (p, s) in candidates.items()}
  if image_sizes:
    eval_sets = [dataclasses.replace(s, name=f'{s.name}@{size}', image_size=size)
                 for size in image_sizes for s in eval_sets]
  which = 'ema_params' if 'ema_params' in candidates else 'params'
  p_eval_step = make_eval_step(model, bf16=config.bf16)
  scores = evaluate_sets(p_eval_step, eval_sets, candidates,
                         predictions=which if predictions else None)
  result = {'model': config.model, 'step': step, 'evals': {}}
  if config.dataset.startswith('folder:'):
    result['class_names'] = run.info.class_names
  for s in eval_sets:
    result['evals'][s.name] = {**s.describe(), **scores[s.name]}
    preds = scores[s.name][which].pop('predictions', None)
    if preds is not None and jax.process_index() == 0:
      path, prefix = _output_paths(predictions, s.name, len(eval_sets) > 1)
      evals_lib.write_predictions(path, preds, multi_label=s.multi_label)
      files = {'predictions': path}
      if s.num_classes <= 100 and not s.multi_label:
        files.update(evals_lib.write_per_class(prefix, preds, s.num_classes, s.class_names))
      result['evals'][s.name]['files'] = files
  if image_sizes:
    rows = []
    for size in image_sizes:
      row = {'image_size': size}
      for s in (s for s in eval_sets if s.image_size == size):
        for w, m in scores[s.name].items():
          row[f'{s.name.split("@")[0]}/{w}'] = m['top1']
      rows.append(row)
    stem = (out[:-len('.json')] if out.endswith('.json') else out) if out else paths_lib.join(workdir, 'eval')
    result['sweep'] = {'table': evals_lib.sweep_table(rows), 'text': stem + '_sweep.txt',
                       'plot': stem + '_sweep.png'}
    if jax.process_index() == 0:
      paths_lib.write_text(stem + '_sweep.txt', result['sweep']['table'] + '\n')
      evals_lib.plot_sweep(stem + '_sweep.png', rows, f'{config.model}: top-1 by test size')
  write_json(result, out, paths_lib.join(workdir, 'eval.json') if workdir else None)
  return result


def imagenet_class_names() -> list[str]:
  """The 1000 ImageNet class names in tfds imagenet2012 label order, as 'synset human-readable name'."""
  import inspect  # pylint: disable=import-outside-toplevel
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  from tensorflow_datasets.datasets.siscore import labels as siscore_labels  # pylint: disable=import-outside-toplevel
  folder = os.path.dirname(inspect.getfile(tfds.builder_cls('imagenet2012')))
  with open(os.path.join(folder, 'labels.txt')) as f:
    synsets = f.read().split()
  return [f'{s} {n}' for s, n in zip(synsets, siscore_labels.IMAGENET_LABELS_LIST)]


def check_finite_params(params: Any, source: str) -> None:
  """Raises ValueError if `params` hold NaN/Inf: their predictions would be meaningless."""
  from nfnet_jax.train import integrity  # pylint: disable=import-outside-toplevel
  bad = integrity.nonfinite(params)
  if bad:
    raise ValueError(f'{source}: {len(bad)} of {len(jax.tree.leaves(params))} param arrays hold NaN '
                     f'or Inf (e.g. {bad[0]}); these weights cannot be evaluated. Use an earlier '
                     'checkpoint (--step) or another params file.')


def load_classifier(*, workdir: str | None = None, pretrained: str | None = None,
                    model: str | None = None, ema: bool = True, image_size: int | None = None):
  """(model name, hk model, params, model_state, config-like dict) from a run or a params file.

  A run's checkpoint knows its model, kwargs and dataset; a params file needs `model` (an
  ImageNet-1k variant such as 'nfnet_f0'). `image_size`, if given, is checked against the model.
  """
  from nfnet_jax import models  # pylint: disable=import-outside-toplevel
  from nfnet_jax import pretrained as pretrained_lib  # pylint: disable=import-outside-toplevel
  if (workdir is None) == (pretrained is None):
    raise ValueError('give exactly one of --workdir (a training run) or --pretrained (a params file).')
  if workdir is not None:
    checkpointer = checkpoints.Checkpointer(workdir, read_only=True)
    try:
      if checkpointer.latest_step() is None:
        raise FileNotFoundError(f'no checkpoint in {checkpoints.checkpoint_dir(workdir)}; train first.')
      state, config = checkpointer.restore_raw(), checkpointer.restore_config()
    finally:
      checkpointer.close()
    # Runs store their class names: an image folder need not be there any more.
    stored = config.get('class_names') if config['dataset'].startswith('folder:') else None
    info = (data_lib.DatasetInfo(config['dataset'], len(stored), {}, '', '', stored) if stored else
            data_lib.get_info(config['dataset'], config.get('data_dir')))
    name = model or config['model']
    net = models.create(name, num_classes=info.num_classes, **config.get('model_kwargs', {}))
    params = state['ema_params' if ema else 'params']
    model_state = state['ema_model_state' if ema else 'model_state']
    names = (imagenet_class_names() if info.num_classes == 1000 and not stored else
             info.class_names or [str(i) for i in range(info.num_classes)])
    size = config.get('eval_image_size') or models.get_spec(name).test_image_size
  else:
    if model is None:
      raise ValueError('--pretrained needs --model (e.g. --model=nfnet_f0).')
    name, net = model, models.create(model, num_classes=1000)
    params = pretrained_lib.load(pretrained, like=model)
    model_state, names = {}, imagenet_class_names()
    size = models.get_spec(model).test_image_size
  minimum = models.get_spec(name).min_image_size
  if image_size is not None and image_size < minimum:
    raise ValueError(f'--image_size={image_size} is too small for {name}: it needs at least {minimum} pixels.')
  check_finite_params(params, workdir or pretrained)
  return name, net, params, model_state, names, size


_IMAGE_MAGIC = ((b'\xff\xd8\xff', 'JPEG'), (b'\x89PNG', 'PNG'), (b'GIF8', 'GIF'), (b'BM', 'BMP'),
                (b'II*\x00', 'TIFF'), (b'MM\x00*', 'TIFF'), (b'RIFF', 'WEBP'))
DECODABLE = ('JPEG', 'PNG', 'GIF', 'BMP')   # what tf.io.decode_image (the evaluation decoder) reads


def _load_image(path: str, image_size: int):
  """The evaluation view of one image file; raises ValueError saying why it cannot be read."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from nfnet_jax.data import preprocessing  # pylint: disable=import-outside-toplevel
  data = paths_lib.read_bytes(path)
  kind = next((k for magic, k in _IMAGE_MAGIC if data.startswith(magic)), None)
  if kind not in DECODABLE:
    raise ValueError(f'unsupported image format {kind or "(unknown, first bytes " + repr(data[:4]) + ")"}; '
                     f'convert it to one of {", ".join(DECODABLE)}.')
  try:
    image = preprocessing.eval_image(tf.constant(data), image_size, 'resize_crop_32',
                                     is_jpeg=kind == 'JPEG')
    return preprocessing.normalize(image[None])[0].numpy()
  except tf.errors.OpError as e:
    raise ValueError(f'cannot decode this {kind} file ({e.message.splitlines()[0][:200]}).') from None


def classify_files(paths: Iterable[str], net, params, model_state, *, class_names: list[str],
                   image_size: int, top_k: int = 5) -> list[tuple[list[tuple[str, float]] | None, str | None]]:
  """(top-k (class name, probability), None) per image file, or (None, why it failed).

  Images are preprocessed as for evaluation; a file that cannot be read or decoded is reported
  and the others are still classified.
  """
  paths = list(paths)
  images, errors = {}, {}
  for i, path in enumerate(paths):
    try:
      images[i] = _load_image(path, image_size)
    except (OSError, ValueError) as e:
      errors[i] = f'{e.strerror}' if isinstance(e, OSError) and e.strerror else str(e)
  tops = {}
  if images:
    apply = jax.jit(lambda p, s, x: net.apply(p, s, None, x, is_training=False))
    outputs, _ = apply(params, model_state, np.stack(list(images.values())))
    probs = np.asarray(jax.nn.softmax(outputs['logits'].astype(jnp.float32)))
    k = min(top_k, probs.shape[-1])
    for i, p in zip(images, probs):
      tops[i] = [(class_names[j], float(p[j])) for j in np.argsort(-p)[:k]]
  return [(tops.get(i), errors.get(i)) for i in range(len(paths))]
