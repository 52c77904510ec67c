"""DeepMind's official parameter layouts: `tests/data/official_layout/<stem>.json`.

Facts about the released checkpoints (module paths, names, shapes, counts, FLOPs), one file per
variant, kept in the repository so a plain clone tests against them. A missing file fails the test
that needs it (never a silent skip), since layout equality is what lets users load the checkpoints.
"""

import json
import pathlib

import pytest

LAYOUT_DIR = pathlib.Path(__file__).resolve().parent / "data" / "official_layout"
STEMS = sorted(p.stem for p in LAYOUT_DIR.glob("*.json"))


def path(stem: str) -> pathlib.Path:
  """The JSON file of one official variant, e.g. 'nfnet_F0'; fails the test when it is absent."""
  p = LAYOUT_DIR / f"{stem}.json"
  if not p.exists():
    pytest.fail(f"official layout {p} not found in the repository.")
  return p


def load(stem: str) -> dict:
  """The parsed JSON of one official variant."""
  return json.loads(path(stem).read_text())
