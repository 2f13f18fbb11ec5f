"""What efflm adds to the survey's seed list by hand, applied by ``seed_import``: categories and
taxonomy the seed lacks, entries it completes or omits (papers efflm implements and the baselines
every table uses), the evaluation data of the papers' main tables, and arXiv ids it links
elsewhere. Data only; the parsing rules stay in ``seed_import``."""

ADDED_CATEGORIES = {  # categories the seed lacks, assigned by title words (kept beside the seed's)
    "efficient-inference/speculative-decoding": ("speculative",),
    "efficient-inference/kv-cache": ("heavy-hitter", "attention sinks"),
    "benchmarks": ("benchmark", "leaderboard", "arena", "pentathlon"),
}
ADDED_TAXONOMY = {
    "efficient-inference/speculative-decoding": "Speculative Decoding",
    "efficient-inference/kv-cache": "KV Cache",
    "benchmarks": "Benchmarks and Evaluation",
}
ENRICH = {  # seed entries completed by hand (normalized title -> fields)
    "gptq accurate quantization for generative pre trained transformers": {"arxiv": "2210.17323"},
    "deduplicating training data makes language models better": {
        "arxiv": "2107.06499",
        "venue": "ACL",
        "year": 2022,
        "url": "https://arxiv.org/abs/2107.06499",
        "code": "https://github.com/google-research/deduplicate-text-datasets",
    },
    "fast inference from transformers via speculative decoding": {
        "arxiv": "2211.17192",
        "venue": "ICML",
        "year": 2023,
        "url": "https://arxiv.org/abs/2211.17192",
    },
}
ADDED_ENTRIES = [  # papers the seed lacks that efflm implements, and the baselines every table uses
    {
        "id": "streamingllm",
        "type": "paper",
        "title": "Efficient Streaming Language Models with Attention Sinks",
        "venue": "ICLR",
        "year": 2024,
        "arxiv": "2309.17453",
        "url": "https://arxiv.org/abs/2309.17453",
        "code": "https://github.com/mit-han-lab/streaming-llm",
        "categories": ["efficient-inference/kv-cache"],
    },
    {
        "id": "dora",
        "type": "paper",
        "title": "DoRA: Weight-Decomposed Low-Rank Adaptation",
        "venue": "ICML",
        "year": 2024,
        "arxiv": "2402.09353",
        "url": "https://arxiv.org/abs/2402.09353",
        "code": "https://github.com/NVlabs/DoRA",
        "categories": ["efficient-fine-tuning/parameter-efficient"],
    },
    {
        "id": "prompt-tuning",
        "type": "paper",
        "title": "The Power of Scale for Parameter-Efficient Prompt Tuning",
        "venue": "EMNLP",
        "year": 2021,
        "arxiv": "2104.08691",
        "url": "https://arxiv.org/abs/2104.08691",
        "code": None,
        "categories": ["efficient-fine-tuning/parameter-efficient"],
    },
    {
        "id": "prefix-tuning",
        "type": "paper",
        "title": "Prefix-Tuning: Optimizing Continuous Prompts for Generation",
        "venue": "ACL",
        "year": 2021,
        "arxiv": "2101.00190",
        "url": "https://arxiv.org/abs/2101.00190",
        "code": "https://github.com/XiangLi1999/PrefixTuning",
        "categories": ["efficient-fine-tuning/parameter-efficient"],
    },
    {
        "id": "adalomo",
        "type": "paper",
        "title": "AdaLomo: Low-memory Optimization with Adaptive Learning Rate",
        "venue": "ACL",
        "year": 2024,
        "arxiv": "2310.10195",
        "url": "https://arxiv.org/abs/2310.10195",
        "code": "https://github.com/OpenLMLab/LOMO",
        "categories": ["efficient-fine-tuning/memory-efficient"],
    },
    {
        "id": "hinton-kd",
        "type": "paper",
        "title": "Distilling the Knowledge in a Neural Network",
        "venue": "arXiv",
        "year": 2015,
        "arxiv": "1503.02531",
        "url": "https://arxiv.org/abs/1503.02531",
        "code": None,
        "categories": ["model-compression/knowledge-distillation"],
    },
    {
        "id": "full-fine-tuning",
        "type": "baseline",
        "title": "Full-parameter fine-tuning with AdamW",
        "categories": ["efficient-fine-tuning/memory-efficient"],
    },
    {
        "id": "dense-baseline",
        "type": "baseline",
        "title": "Dense baseline (uncompressed model)",
        "categories": ["model-compression"],
    },
    {
        "id": "rtn",
        "type": "baseline",
        "title": "Round-to-nearest weight quantization (RTN)",
        "categories": ["model-compression/model-quantization"],
    },
    {
        "id": "w8a8",
        "type": "baseline",
        "title": "Naive W8A8 quantization (int8 weights and activations)",
        "categories": ["model-compression/model-quantization"],
    },
    {
        "id": "magnitude-pruning",
        "type": "baseline",
        "title": "Magnitude pruning (smallest |W| per output row or N:M run)",
        "categories": ["model-compression/model-pruning"],
    },
    {
        "id": "svd-lowrank",
        "type": "baseline",
        "title": "Truncated SVD low-rank factorization",
        "categories": ["model-compression/low-rank-decomposition"],
    },
    {
        "id": "kv-int8",
        "type": "baseline",
        "title": "int8 KV cache (per-token, per-head scales)",
        "categories": ["efficient-inference/kv-cache"],
    },
]
DATASETS = {  # evaluation data named in the papers' main tables, for the methods efflm implements
    "gptq": (["WikiText-2", "PTB", "C4"], ["LAMBADA", "ARC", "PIQA", "StoryCloze"]),
    "sparsegpt": (["WikiText-2", "PTB", "C4"], ["LAMBADA", "PIQA", "ARC", "StoryCloze"]),
    "simple-effective-pruning-approach-large-language": (
        ["WikiText-2", "C4"],
        ["BoolQ", "RTE", "HellaSwag", "WinoGrande", "ARC", "OBQA"],
    ),
    "awq": (["WikiText-2"], []),
    "llm-pruner": (["WikiText-2", "PTB"], ["BoolQ", "PIQA", "HellaSwag", "WinoGrande", "ARC", "OBQA"]),
    "losparse": ([], ["GLUE", "SQuAD", "XSum", "CNN/DailyMail"]),
    "smoothquant": (["WikiText-2"], ["LAMBADA", "HellaSwag", "PIQA", "WinoGrande", "OpenBookQA", "RTE", "COPA"]),
    "lora": ([], ["GLUE", "E2E NLG", "WikiSQL", "SAMSum"]),
}
KNOWN_ARXIV = {  # arXiv ids the list omits (it links another host) for papers efflm implements
    "language model compression with weighted low rank factorization": "2207.00112",
    "lora low rank adaptation of large language models": "2106.09685",
    "dylora parameter efficient tuning of pretrained models using dynamic search free low rank adaptation": "2210.07558",
    "few shot parameter efficient fine tuning is better and cheaper than in context learning": "2205.05638",
}
