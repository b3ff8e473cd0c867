"""Benchmarks shipped with the project (`make bench`); results go to bench/results/."""
