"""Tests of musubi_workspace.tune."""
