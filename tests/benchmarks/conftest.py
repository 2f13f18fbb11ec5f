import pytest


def pytest_collection_modifyitems(items):
    """A test that runs a benchmark script end to end (it calls ``run``) is marked ``benchmarks``:
    ``make test`` runs it, ``make test-fast`` leaves it out."""
    for item in items:
        fn = getattr(item, "function", None)
        if fn is not None and "run" in fn.__code__.co_names and item.path.parent.name == "benchmarks":
            item.add_marker(pytest.mark.benchmarks)
