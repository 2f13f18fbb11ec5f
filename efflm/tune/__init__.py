"""Fine-tuning runs end to end and an adapter's other uses (generate/eval with ``--adapter``,
``efflm merge``): the layer above the method families that reads files, trains and records.

``recipe`` the method recipe · ``data`` training batches and held-out evaluation ·
``checkpoints`` atomic checkpoints and ``--resume`` · ``teacher`` distillation's teacher check
and top-k cache · ``run`` the ``efflm finetune`` command and the
recovery suite · ``merge`` loading and folding adapters.
"""

from efflm.tune.data import Data, evaluator, load_data
from efflm.tune.merge import load_model, merge
from efflm.tune.recipe import read_method_recipe, train_config_from_dict
from efflm.tune.run import finetune, recovery_suite
from efflm.tune.teacher import build_cache, generate_data

__all__ = [
    "Data",
    "build_cache",
    "evaluator",
    "generate_data",
    "finetune",
    "load_data",
    "load_model",
    "merge",
    "read_method_recipe",
    "recovery_suite",
    "train_config_from_dict",
]
