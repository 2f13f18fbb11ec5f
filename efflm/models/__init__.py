"""Models before any method: ``sources`` model specs (the default model, a Hugging Face
directory, a GGUF file, ``tiny-llama`` and ``tiny-<family>``, a hub id in the local Hugging Face cache) and plain
loading · ``arch`` the layout registry (architecture facts) · ``fused`` fused projections (Phi-3) split into
Llama's as weights load · ``gpt2`` GPT-2 read as the OPT it computes · ``shards`` single tensors read from a checkpoint's safetensors files ·
``streaming`` a model whose decoder layers are read from the checkpoint one at a time (layer-streamed
compression) · ``tiny`` the seeded random test models, one per family · ``file_checks`` checks that a file is a model
before anything heavy reads it · ``dense`` the baseline method."""
