"""musubi-workspace: the tool behind the Makefile (console script `ws`)."""

__version__ = "0.1.0"
