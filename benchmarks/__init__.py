"""Benchmarks: scripts (``bench_*.py``, ``eval_minhash.py``, run as files) and the pytest-benchmark
suite (``test_bench_*.py``). A package only so that pytest imports ``benchmarks/conftest.py`` as
``benchmarks.conftest``: as a bare ``conftest`` it would replace ``tests/conftest.py`` in
``sys.modules``, which the tests import helpers from."""
