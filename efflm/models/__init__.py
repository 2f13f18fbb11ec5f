"""Models before any method: ``sources`` model specs (the default model, a Hugging Face
directory, a GGUF file, ``tiny-llama``, a hub id in the local Hugging Face cache) and plain loading · ``arch`` the layout registry
(architecture facts) · ``shards`` single tensors read from a checkpoint's safetensors files ·
``streaming`` a model whose decoder layers are read from the checkpoint one at a time (layer-streamed
compression) · ``tiny`` the seeded random test model · ``file_checks`` checks that a file is a model
before anything heavy reads it · ``dense`` the baseline method."""
