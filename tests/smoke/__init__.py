"""Tests of musubi_workspace.smoke."""
