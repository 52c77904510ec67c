"""Named eval sets (config.evals): ImageNet validation, ImageNet-ReaL, ImageNet-V2 or any tfds split.

Each entry of config.evals is an `eval_set(...)`; fields left None take the run's defaults: the
training dataset, its validation split (config.eval_split), config.eval_preprocess, the variant's
test size (config.eval_image_size) and config.eval_batch_size (or batch_size). `resolve` turns them
into `EvalSet`s before anything compiles; `batches` reads one. Also here: the ReaL labels JSON and the
outputs of a scored split (predictions JSONL, per-class table, confusion matrix, resolution sweep).

ImageNet-ReaL (Beyer et al. 2020, "Are we done with ImageNet?"): a prediction is correct when it is in
the image's set of reassessed labels; images whose set is empty are left out (num_excluded).
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any, Callable, Iterator

import numpy as np

from nfnet_jax import data as data_lib
from nfnet_jax import extras
from nfnet_jax import paths

ml_collections = extras.require('ml_collections', 'evaluation sets (nfnet_jax.evals)')

REAL = 'imagenet2012_real'
REAL_HOW = (f'prepare tfds {REAL!r} (`tfds build {REAL} --manual_dir DIR_WITH_ILSVRC2012_img_val.tar '
            '--data_dir DATA_DIR`, which downloads real.json) or give the ReaL labels JSON from '
            'https://github.com/google-research/reassessed-imagenet as real_labels=PATH '
            '(e.g. --config.evals.real.real_labels=real.json) over the prepared imagenet2012')
V2_HOW = ('prepare it where it can download: `tfds build imagenet_v2/matched-frequency --data_dir DATA_DIR` '
          '(variants: matched-frequency, threshold-0.7, topimages)')
_VAL_FILE = re.compile(r'ILSVRC2012_val_(\d{8})')


def eval_set(dataset: str | None = None, split: str | None = None, *, preprocess: str | None = None,
             image_size: int | None = None, batch_size: int | None = None,
             real_labels: str | None = None, optional: bool = False) -> ml_collections.ConfigDict:
  """One config.evals entry; None fields take the run's defaults (see the module docstring).

  real_labels: the ReaL JSON (a list of label lists in validation-file order), scored over
  imagenet2012's validation images. optional: skip the set with one line when its data is absent.
  """
  ref = ml_collections.FieldReference
  return ml_collections.ConfigDict({
      'dataset': ref(dataset, field_type=str), 'split': ref(split, field_type=str),
      'preprocess': ref(preprocess, field_type=str), 'image_size': ref(image_size, field_type=int),
      'batch_size': ref(batch_size, field_type=int), 'real_labels': ref(real_labels, field_type=str),
      'optional': optional})


def imagenet_evals() -> ml_collections.ConfigDict:
  """val, and ReaL and V2 (matched frequency) when prepared: the sets ImageNet papers report."""
  return ml_collections.ConfigDict({
      'val': eval_set(),
      'real': eval_set(REAL, 'validation', optional=True),
      'v2': eval_set('imagenet_v2/matched-frequency', 'test', optional=True)})


@dataclasses.dataclass(frozen=True)
class EvalSet:
  """A resolved eval set: everything needed to read and score it."""
  name: str
  dataset: str
  data_dir: str | None
  split: str
  preprocess: str
  image_size: int
  batch_size: int
  num_examples: int
  num_classes: int
  class_names: list | None = None
  real_table: np.ndarray | None = None   # [validation files, classes] bool, from real_labels JSON
  multi_label: bool = False              # scored as ReaL (tfds imagenet2012_real or real_labels)
  folder_val_fraction: float = 0.1       # 'folder:' datasets without val/ (data/folder.py)

  def describe(self) -> dict:
    return {'dataset': self.dataset, 'split': self.split, 'image_size': self.image_size,
            'preprocess': self.preprocess}


class EvalSetError(ValueError):
  """An eval set that cannot be read; the message says which and what to do."""


def _how(dataset: str) -> str:
  if dataset == REAL:
    return REAL_HOW
  if dataset.startswith('imagenet_v2'):
    return V2_HOW
  return ''


def load_real_labels(path: str, num_examples: int, num_classes: int) -> np.ndarray:
  """The ReaL JSON as a [num_examples, num_classes] bool table; its length must match the split."""
  try:
    lists = json.loads(paths.read_text(path))
  except (OSError, json.JSONDecodeError) as e:
    raise EvalSetError(f'real_labels={path!r} cannot be read as JSON: {e}') from None
  if not isinstance(lists, list) or not all(isinstance(x, list) for x in lists):
    raise EvalSetError(f'real_labels={path!r} must be a JSON list of label lists (one per validation file).')
  if len(lists) != num_examples:
    raise EvalSetError(f'real_labels={path!r} has {len(lists)} label lists but the imagenet2012 validation '
                       f'split has {num_examples} images; use the real.json that matches this split.')
  table = np.zeros((num_examples, num_classes), bool)
  for i, labels in enumerate(lists):
    for label in labels:
      if not (isinstance(label, int) and 0 <= label < num_classes):
        raise EvalSetError(f'real_labels={path!r}: entry {i} has label {label!r}, not in [0, {num_classes}).')
      table[i, label] = True
  return table


def resolve(config, *, test_image_size: int, min_image_size: int, num_classes: int,
            names: list[str] | None = None, log: Callable[[str], None] = print) -> list[EvalSet]:
  """config.evals (or the named ones) as EvalSets; raises EvalSetError, before anything compiles.

  A missing optional set is skipped with one line when `names` is None; a named one is an error.
  """
  evals = config.evals
  if names is not None:
    unknown = [n for n in names if n not in evals]
    if unknown:
      raise EvalSetError(f'unknown eval set(s) {unknown}; config.evals has {list(evals)}.')
  resolved = []
  for name in names or list(evals):
    e = evals[name]
    real_labels = e.get('real_labels')
    dataset = e.dataset or config.dataset
    if real_labels and dataset == REAL:
      dataset = 'imagenet2012'   # the JSON path: ordinary validation images, labels from the file
    try:
      info = data_lib.get_info(dataset, data_dir=config.data_dir,
                               folder_val_fraction=config.folder_val_fraction)
    except FileNotFoundError as e_missing:
      how = _how(dataset)
      message = f'eval set {name!r}: {e_missing}' + (f' For {name!r} you can also {how}.' if how else '')
      if e.optional and names is None:
        log(f'Skipping eval set {name!r}: {dataset} is not prepared'
            f'{" in " + config.data_dir if config.data_dir else ""} ({how or "see its tfds page"}).')
        continue
      raise EvalSetError(message) from None
    except ValueError as e_bad:
      raise EvalSetError(f'eval set {name!r}: {e_bad}') from None
    default_split = config.eval_split if dataset == config.dataset and config.eval_split else info.eval_split
    split = e.split or default_split
    try:
      num_examples = info.check_split(split)
    except ValueError as e_split:
      raise EvalSetError(f'eval set {name!r}: {e_split}') from None
    if info.num_classes != num_classes:
      raise EvalSetError(f'eval set {name!r}: {dataset} has {info.num_classes} classes but the model '
                         f'predicts {num_classes}.')
    image_size = e.image_size or config.eval_image_size or test_image_size
    if image_size < min_image_size:
      raise EvalSetError(f'eval set {name!r}: image_size={image_size} is too small for {config.model}: '
                         f'it needs at least {min_image_size} pixels.')
    preprocess = e.preprocess or config.eval_preprocess
    if preprocess not in data_lib.EVAL_PREPROCESS:
      raise EvalSetError(f'eval set {name!r}: preprocess={preprocess!r} must be one of '
                         f'{data_lib.EVAL_PREPROCESS}.')
    batch_size = e.batch_size or config.eval_batch_size or config.batch_size
    if not (isinstance(batch_size, int) and batch_size >= 1):
      raise EvalSetError(f'eval set {name!r}: batch_size={batch_size!r} must be a positive integer.')
    table = None
    if real_labels:
      if dataset != 'imagenet2012' or split.split('[')[0] != 'validation' or info.name_key is None:
        raise EvalSetError(f'eval set {name!r}: real_labels scores imagenet2012 validation images '
                           f'(file names ILSVRC2012_val_*), not {dataset} {split}.')
      table = load_real_labels(real_labels, info.splits['validation'], info.num_classes)
    resolved.append(EvalSet(
        name=name, dataset=dataset, data_dir=config.data_dir, split=split, preprocess=preprocess,
        image_size=image_size, batch_size=batch_size, num_examples=num_examples,
        num_classes=info.num_classes, class_names=info.class_names, real_table=table,
        multi_label=table is not None or info.label_set_key is not None,
        folder_val_fraction=config.folder_val_fraction))
  return resolved


def _with_real_labels(batches: Iterator[dict], table: np.ndarray) -> Iterator[dict]:
  """Adds 'label_set' rows from the ReaL table, found by each image's validation file number."""
  for batch in batches:
    files = batch['file'].reshape(-1)
    rows = np.zeros((len(files), table.shape[1]), bool)
    for i, (f, valid) in enumerate(zip(files, batch['mask'].reshape(-1))):
      if valid:
        match = _VAL_FILE.search(f.decode() if isinstance(f, bytes) else str(f))
        if not match:
          raise EvalSetError(f'real_labels: {f!r} is not an ILSVRC2012 validation file name.')
        rows[i] = table[int(match.group(1)) - 1]
    batch['label_set'] = rows.reshape(batch['mask'].shape + (table.shape[1],))
    yield batch


def batches(eval_set: EvalSet, **iterator_kwargs) -> Iterator[dict]:
  """Every example of this process's shard of the set once (data.eval_iterator), with ReaL labels."""
  it = data_lib.eval_iterator(eval_set.dataset, data_dir=eval_set.data_dir, split=eval_set.split,
                              global_batch_size=eval_set.batch_size, image_size=eval_set.image_size,
                              preprocess=eval_set.preprocess,
                              folder_val_fraction=eval_set.folder_val_fraction, **iterator_kwargs)
  return _with_real_labels(it, eval_set.real_table) if eval_set.real_table is not None else it


# Outputs of a scored split --------------------------------------------------------------------------

def write_predictions(path: str, preds: dict, *, multi_label: bool) -> None:
  """One JSON object per example in split order: index, file, label (int or ReaL list), top5, top5_prob."""
  lines = []
  for i in range(len(preds['index'])):
    row: dict[str, Any] = {'index': int(preds['index'][i])}
    if 'file' in preds:
      row['file'] = preds['file'][i]
    row['label'] = (np.flatnonzero(preds['label_set'][i]).tolist() if multi_label
                    else int(preds['labels'][i]))
    row['top5'] = preds['top5'][i].tolist()
    row['top5_prob'] = [round(float(p), 6) for p in preds['top5_prob'][i]]
    lines.append(json.dumps(row) + '\n')
  paths.write_text(path, ''.join(lines))


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
  """[true class, predicted class] counts."""
  m = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(m, (labels, predicted), 1)
  return m


def write_per_class(prefix: str, preds: dict, num_classes: int, class_names: list | None) -> dict:
  """PREFIX.per_class.csv (class, name, examples, correct, top1) and PREFIX.confusion.png."""
  m = confusion_matrix(preds['labels'], preds['top5'][:, 0], num_classes)
  names = class_names or [str(i) for i in range(num_classes)]
  csv_path, png_path = prefix + '.per_class.csv', prefix + '.confusion.png'
  rows = ['class,name,examples,correct,top1\n']
  for c in range(num_classes):
    n, k = int(m[c].sum()), int(m[c, c])
    rows.append(f'{c},{names[c]},{n},{k},{k / n if n else float("nan"):.4f}\n')
  paths.write_text(csv_path, ''.join(rows))
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, ax = plt.subplots(figsize=(2 + 0.25 * num_classes, 1.5 + 0.25 * num_classes))
  image = ax.imshow(m, cmap='Blues')
  fig.colorbar(image, ax=ax, label='examples')
  ax.set_xlabel('predicted class')
  ax.set_ylabel('true class')
  if num_classes <= 30:
    ax.set_xticks(range(num_classes), names, rotation=90)
    ax.set_yticks(range(num_classes), names)
  ax.set_title(f'confusion matrix ({int(m.sum())} examples)')
  fig.tight_layout()
  paths.write_figure(png_path, fig, dpi=100)
  return {'per_class': csv_path, 'confusion_matrix': png_path}


def sweep_table(rows: list[dict]) -> str:
  """Top-1 (%) per test size: rows are {'image_size', 'column': top1}."""
  columns = [k for k in rows[0] if k != 'image_size']
  lines = ['| test size | ' + ' | '.join(columns) + ' |', '|---' * (len(columns) + 1) + '|']
  for r in rows:
    lines.append(f'| {r["image_size"]} | ' + ' | '.join(f'{100 * r[c]:.2f}' for c in columns) + ' |')
  return '\n'.join(lines)


def plot_sweep(path: str, rows: list[dict], title: str) -> None:
  """PNG of top-1 (%) against test size, one line per column of `rows`."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  sizes = [r['image_size'] for r in rows]
  fig, ax = plt.subplots(figsize=(6, 4))
  for c in (k for k in rows[0] if k != 'image_size'):
    ax.plot(sizes, [100 * r[c] for r in rows], marker='o', label=c)
  ax.set_xlabel('test image size (pixels)')
  ax.set_ylabel('top-1 (%)')
  ax.set_xticks(sizes)
  ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  paths.write_figure(path, fig, dpi=100)
