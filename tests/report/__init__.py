"""Tests of musubi_workspace.report."""
