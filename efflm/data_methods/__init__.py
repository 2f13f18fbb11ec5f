"""Data-centric methods (``efflm data ...``): deduplication, data selection, prompt compression
and demonstration selection. A data method's ``apply`` reads rows' texts, not a model. The data
they read (splits, JSONL, encoders) is ``efflm.datasets``."""
