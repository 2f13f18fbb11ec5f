"""Quantization methods, one paper a file (``rtn`` baseline, ``gptq``, ``awq``, ``smoothquant``,
``w8a8``, ``spqr``, ``squeezellm``, ``quip``, ``llm_int8``, ``zeroquant``, ``zeroquant_fp``,
``nf4``, ``embedding``), and the math they share: ``grid`` grids, rounding and packing ·
``ldlq`` GPTQ's and QuIP's solver · ``scaling`` folding a scale into its producer ·
``fake_quant`` straight-through training."""
