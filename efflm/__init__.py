"""efflm: the Efficient-LLM literature as one toolkit (see README.md).

``efflm.compress``, ``efflm.evaluate``, ``efflm.generate`` and ``efflm.save`` are the Python
API (``efflm/api.py``), imported on first use so that ``import efflm.core`` stays light.
"""

__version__ = "0.1.0"
__all__ = ["compress", "evaluate", "generate", "save"]


def __getattr__(name: str):
    if name in __all__:
        from efflm import api

        return getattr(api, name)
    raise AttributeError(f"module 'efflm' has no attribute {name!r}")
