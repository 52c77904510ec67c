"""Dataset descriptions shared by every input pipeline."""

import dataclasses
from typing import Dict, List, Optional


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What the trainer needs to know about a dataset before reading it."""
  name: str
  num_classes: int
  splits: Dict[str, int]  # split name → number of examples
  train_split: str
  eval_split: str
  class_names: Optional[List[str]] = None
  image_key: str = "image"
  label_key: str = "label"
  name_key: Optional[str] = None  # feature naming each example in error messages (e.g. 'file_name')
  label_set_key: Optional[str] = None  # a sequence-of-labels feature (ImageNet-ReaL's 'real_label')
  is_jpeg: bool = True

  def check_split(self, split: str) -> int:
    base = split.split("[")[0]
    if base not in self.splits:
      raise ValueError(f"Dataset {self.name!r} has no split {split!r}; its splits are {sorted(self.splits)}")
    return self.splits[base]


class BadDataError(RuntimeError):
  """An example could not be decoded, or has a label outside [0, num_classes)."""
