"""Skip without a native library, except on CI, which installs a compiler and oneDNN: there fail."""

import os

import pytest


def require(available: bool, reason: str, what: str) -> None:
  if not available:
    if os.environ.get("CI") == "true":
      pytest.fail(f"{what} should be available on CI: {reason}")
    pytest.skip(f"{what} not available: {reason}")
