"""Benchmark metrics for the paper's tables (issue 10), one module per family.

Import the module you need (``from spider_jax.metrics import captioning``): nothing is imported here, so a
caller that only wants caption scores does not load the media metrics' models, and the reverse.
"""
