"""Fine-tuning runs end to end and an adapter's other uses (generate/eval with ``--adapter``,
``efflm merge``): the layer above the method families that reads files, trains and records.
The methods and the training loop itself are ``efflm.finetune``.

``method_recipe`` the method recipe · ``batches`` training batches and held-out evaluation ·
``checkpoints`` atomic checkpoints and ``--resume`` · ``teacher`` distillation's teacher check
and top-k cache · ``run`` the ``efflm finetune`` command and the
recovery suite · ``merge`` loading and folding adapters.
"""

from efflm.trainer.batches import Data, evaluator, load_data
from efflm.trainer.merge import load_model, merge
from efflm.trainer.method_recipe import read_method_recipe, train_config_from_dict
from efflm.trainer.run import finetune, recovery_suite
from efflm.trainer.teacher import build_cache, generate_data

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
