"""Running a model fast: ``engine`` the decode path over a static KV cache (``cache``) ·
``fast_decode`` its fused one-token step in C · ``generate`` sampling and streaming ·
``logits_process`` per-request bias, penalties and log-probabilities · ``grammar`` constrained
decoding (llguidance) · methods:
``h2o``, ``streaming_llm``, ``kv_int8`` (KV policies), ``speculative``."""
