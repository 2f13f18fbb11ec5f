"""Imports every method module so that each registers itself. Add new paper files here."""
import efflm.models.dense  # noqa: F401
import efflm.quantize.gptq  # noqa: F401
import efflm.quantize.rtn  # noqa: F401
import efflm.quantize.awq  # noqa: F401
import efflm.quantize.embedding  # noqa: F401
import efflm.quantize.smoothquant  # noqa: F401
import efflm.quantize.w8a8  # noqa: F401
import efflm.prune.magnitude  # noqa: F401
import efflm.prune.wanda  # noqa: F401
import efflm.prune.sparsegpt  # noqa: F401
import efflm.prune.llm_pruner  # noqa: F401
import efflm.lowrank.svd  # noqa: F401
import efflm.lowrank.fwsvd  # noqa: F401
import efflm.lowrank.losparse  # noqa: F401
