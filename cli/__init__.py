"""Composition: the ``velora`` command line, its commands and the operator key lifecycle.

The top layer: it may import every other package, and nothing imports it.
"""
