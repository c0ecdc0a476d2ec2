"""Tests of musubi_workspace.runs."""
