"""Conversion of parameters to and from other frameworks' formats (see interop/timm.py)."""
