"""Tests against the real musubi-tuner (a package, so its conftest does not shadow tests/conftest.py)."""
