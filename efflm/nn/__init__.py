"""The modules compressed models are made of; importing this package registers them all."""

from efflm.nn.module_registry import efflm_modules, module_class, register_module, role  # noqa: I001 (first)
from efflm.nn import act_quant_linear, fp_linear, incoherent_linear, int8_linear, lowrank_linear, lut_linear  # noqa: F401
from efflm.nn import experts, nf4_linear, quant_embedding, quant_linear, spqr_linear  # noqa: F401

__all__ = ["efflm_modules", "module_class", "register_module", "role"]
