"""Fixture builder for tests: a miniature ImageNet in the official tar layout, prepared by tfds.

The writer lives in the library (nfnet_jax/data/mini_imagenet.py) so that scripts/benchmark.py can use it
too; tests import it from here (`import mini_imagenet`), the session fixture is `mini_imagenet` in
tests/conftest.py.
"""

from nfnet_jax.data.mini_imagenet import (build_prepared, shipped_validation_labels,  # noqa: F401
                                          write_mini_imagenet, write_realistic_mini_imagenet)
