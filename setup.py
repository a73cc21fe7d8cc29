"""Installs every top-level module of the checkout; pyproject.toml holds the metadata and dependencies."""
from pathlib import Path

from setuptools import setup

# Globbed rather than listed, so a new module installs without editing a list.
setup(py_modules=sorted(path.stem for path in Path(__file__).resolve().parent.glob('*.py') if path.stem != 'setup'))
