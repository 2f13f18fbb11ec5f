"""The one index of efflm's methods: importing it registers every method file.

The CLI, the pipeline, the bench and the catalog look methods up here (``get``,
``methods``, ``config_from_dict``), never in the registry directly, so every method is
known wherever one is named. Adding a paper: one line below (see docs/architecture.md).
"""

import efflm.datasel.calibrate_before_use  # noqa: F401
import efflm.datasel.dedup  # noqa: F401
import efflm.datasel.dsir  # noqa: F401
import efflm.datasel.ifd  # noqa: F401
import efflm.datasel.kate  # noqa: F401
import efflm.datasel.llmlingua  # noqa: F401
import efflm.datasel.ppl_filter  # noqa: F401
import efflm.datasel.random_demos  # noqa: F401
import efflm.datasel.random_select  # noqa: F401
import efflm.datasel.selective_context  # noqa: F401
import efflm.datasel.truncate_prompt  # noqa: F401
import efflm.distill.gkd  # noqa: F401
import efflm.distill.kd  # noqa: F401
import efflm.distill.llm_qat  # noqa: F401
import efflm.finetune.adalomo  # noqa: F401
import efflm.finetune.adalora  # noqa: F401
import efflm.finetune.dora  # noqa: F401
import efflm.finetune.dylora  # noqa: F401
import efflm.finetune.full  # noqa: F401
import efflm.finetune.ia3  # noqa: F401
import efflm.finetune.llama_adapter  # noqa: F401
import efflm.finetune.lomo  # noqa: F401
import efflm.finetune.lora  # noqa: F401
import efflm.finetune.lora_fa  # noqa: F401
import efflm.finetune.mezo  # noqa: F401
import efflm.finetune.prefix_tuning  # noqa: F401
import efflm.finetune.prompt_tuning  # noqa: F401
import efflm.finetune.qlora  # noqa: F401
import efflm.inference.h2o  # noqa: F401
import efflm.inference.kv_int8  # noqa: F401
import efflm.inference.speculative  # noqa: F401
import efflm.inference.streaming_llm  # noqa: F401
import efflm.lowrank.fwsvd  # noqa: F401
import efflm.lowrank.losparse  # noqa: F401
import efflm.lowrank.svd  # noqa: F401
import efflm.models.dense  # noqa: F401
import efflm.prune.llm_pruner  # noqa: F401
import efflm.prune.magnitude  # noqa: F401
import efflm.prune.sparsegpt  # noqa: F401
import efflm.prune.wanda  # noqa: F401
import efflm.quantize.awq  # noqa: F401
import efflm.quantize.embedding  # noqa: F401
import efflm.quantize.gptq  # noqa: F401
import efflm.quantize.llm_int8  # noqa: F401
import efflm.quantize.nf4  # noqa: F401
import efflm.quantize.quip  # noqa: F401
import efflm.quantize.rtn  # noqa: F401
import efflm.quantize.smoothquant  # noqa: F401
import efflm.quantize.spqr  # noqa: F401
import efflm.quantize.squeezellm  # noqa: F401
import efflm.quantize.w8a8  # noqa: F401
import efflm.quantize.zeroquant  # noqa: F401
import efflm.quantize.zeroquant_fp  # noqa: F401
from efflm.core.registry import FAMILIES, Method, MethodConfig, check_for_model, config_from_dict, get, methods

__all__ = ["FAMILIES", "Method", "MethodConfig", "check_for_model", "config_from_dict", "get", "methods"]
