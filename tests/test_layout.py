"""Every registered variant's parameter tree equals DeepMind's released layout (module paths, names, shapes).

The reference layouts live in ``tests/data/official_layout/*.json`` (one per official variant). Params are
built with ``jax.eval_shape`` only, so no weights are allocated even for NFNet-F7+.
"""

import re

import jax
import numpy as np
import pytest

from nfnet_jax import models
import official_layouts

LAYOUT_DIR = official_layouts.LAYOUT_DIR
STEMS = official_layouts.STEMS


def registry_name(stem: str) -> str:
  """'nfnet_F0plus' -> 'nfnet_f0plus', 'nf_regnet_B0' -> 'nf_regnet_b0', 'nf_resnet_ResNet50' -> 'nf_resnet50',
  'skipinit_resnet_ResNet50' -> 'skipinit_resnet50'."""
  family, variant = re.fullmatch(r"(nfnet|nf_regnet|nf_resnet|skipinit_resnet|fixup_resnet|resnet)_(\w+)",
                                 stem).groups()
  if family.endswith("resnet"):
    return family + variant[len("ResNet"):]
  return f"{family}_{variant.lower()}"


def _shapes(tree):
  return {module: {name: list(leaf.shape) for name, leaf in leaves.items()} for module, leaves in tree.items()}


def test_layout_folder_is_present():
  if len(STEMS) != 44:
    pytest.fail(f"expected the 44 official layouts in {LAYOUT_DIR}, found {len(STEMS)}.")


@pytest.mark.parametrize("stem", STEMS or ["<missing tests/data/official_layout>"])
def test_params_tree_matches_official_layout(stem):
  official = official_layouts.load(stem)
  name = registry_name(stem)
  assert name in models.available()
  spec = models.get_spec(name)
  assert spec.official_layout == stem
  for ours, theirs in ((spec.train_image_size, official["train_imsize"]),
                       (spec.test_image_size, official["test_imsize"])):
    if theirs is not None:
      assert ours == theirs

  model = models.create(name, num_classes=official["num_classes"])
  images = jax.ShapeDtypeStruct(tuple(official["input_size_used"]), np.float32)
  params, state = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, is_training=True), images)

  assert _shapes(params) == official["params"]
  assert _shapes(state) == official["state"]
  assert {str(leaf.dtype) for leaf in jax.tree_util.tree_leaves(params)} == set(official["param_dtypes"])
  assert sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(params)) == official["num_params"]
  assert sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(state)) == official["num_state"]
