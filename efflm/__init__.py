"""efflm: the Efficient-LLM literature as one toolkit that runs and measures every method."""

__version__ = "0.1.0"
