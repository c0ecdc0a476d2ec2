"""Tests of musubi_workspace.checks."""
