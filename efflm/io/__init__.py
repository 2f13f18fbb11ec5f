"""Model files: ``load`` every model spec efflm accepts (efflm directories included), ``save``
efflm directories, ``streamed_save`` an efflm directory written layer by layer as a streamed model
is compressed, ``compressed_tensors`` and ``gguf_export`` the engines' formats (``gguf_blocks``
llama.cpp's block types from efflm's codes, ``gguf_kquants`` its K-quant super-blocks, ``gguf_vocab`` a Hugging Face tokenizer as GGUF
metadata, ``gguf_gpt2`` GPT-2's own tensors from the OPT efflm reads it as, ``gguf_lora`` adapters) — all through the module registry of ``efflm.nn``, never a concrete class."""
