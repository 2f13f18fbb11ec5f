"""Fine-tuning methods (one paper, one file: ``lora``, ``dora``, ``lora_fa``, ``dylora``,
``adalora``, ``ia3``, ``prompt_tuning``, ``prefix_tuning``, ``llama_adapter``, ``qlora``, ``full``,
``lomo``, ``adalomo``, ``mezo``) and what they share: ``adapter`` targets and merging ·
``train`` the one training loop · ``hooks`` what a method adds to it · ``loss`` chunked cross
entropy · ``full_params``/``fused_update`` full-parameter updates · ``peft_files`` peft's
adapter file format. Runs end to end (data, checkpoints, records) are ``efflm.trainer``."""
