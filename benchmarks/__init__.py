"""Benchmarks of trainbus against a hand-written loop and its peers; run ``python -m benchmarks``."""
