"""Shim for tools that still call setup.py; the metadata lives in pyproject.toml.

setuptools' own build output goes to .setuptools-build/ so that the top-level
build/ folder stays the project's packaging and deployment folder.
"""

from setuptools import setup

setup(options={"build": {"build_base": ".setuptools-build"}})
