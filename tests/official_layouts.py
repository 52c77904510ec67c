"""DeepMind's official parameter layouts: `<repo>/../shared/official_layout/<stem>.json`.

CI clones the repository with `shared/` beside it; a missing file fails the test that needs it
(never a silent skip), since layout equality is what lets users load the released checkpoints.
"""

import json
import pathlib

import pytest

LAYOUT_DIR = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "official_layout"
STEMS = sorted(p.stem for p in LAYOUT_DIR.glob("*.json"))


def path(stem: str) -> pathlib.Path:
  """The JSON file of one official variant, e.g. 'nfnet_F0'; fails the test when it is absent."""
  p = LAYOUT_DIR / f"{stem}.json"
  if not p.exists():
    pytest.fail(f"official layout {p} not found: place shared/official_layout beside the repository.")
  return p


def load(stem: str) -> dict:
  """The parsed JSON of one official variant."""
  return json.loads(path(stem).read_text())
