"""trainbus benchmarks, against a hand-written loop and its peers: ``python -m benchmarks``."""
