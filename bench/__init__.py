"""The shipped benchmarks (``make bench``); development code, not part of the installed package."""
