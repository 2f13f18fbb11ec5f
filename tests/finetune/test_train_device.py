"""The training loop on a device other than the CPU: the model moves there, and every micro-batch,
mask and label follows it (what crashed `efflm finetune` on a CUDA machine: ``index is on cpu,
different from other tensors on cuda:0``). Checked without a GPU on torch's ``meta`` device,
where a CPU tensor meeting the model's raises as it would on a GPU."""

import pytest
import torch

from efflm.finetune.full_params import keep_mask, unfreeze
from efflm.finetune.hooks import TrainHooks
from efflm.finetune.mezo import MeZO
from efflm.finetune.train import LossModel, TrainConfig, train
from efflm.methods import get
from efflm.trainer.batches import load_data
from efflm.trainer.checkpoints import fingerprint_of
from efflm.trainer.method_recipe import train_config_from_dict
from tests.finetune.conftest import tiny_config


class Stop(Exception):
    pass


def _spy(monkeypatch, stop: bool):
    """Record, for every micro-batch the loss model receives, its tensors' and the model's devices."""
    seen, forward = [], LossModel.forward

    def spy(self, input_ids, attention_mask, labels, **extra):
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels, **extra}
        seen.append(({k: v.device for k, v in batch.items()}, {p.device for p in self.model.parameters()}))
        if stop:
            raise Stop
        return forward(self, input_ids, attention_mask, labels, **extra)

    monkeypatch.setattr(LossModel, "forward", spy)
    return seen


def _lora(tiny):
    model, tok = tiny
    return get("lora").apply(model, tiny_config("lora"), None), tok


@pytest.mark.parametrize("data", ["domain", "tasks"])
def test_each_micro_batch_is_moved_to_the_device_the_model_trains_on(tiny, monkeypatch, data):
    model, tok = _lora(tiny)
    cfg = TrainConfig(steps=1, batch=2, grad_accum=2, seq_len=128, warmup=0)
    batches = load_data(data, tok, cfg)
    assert batches.batch_at(0, 0, 2)["input_ids"].device.type == "cpu"  # the data makes CPU tensors
    seen = _spy(monkeypatch, stop=True)
    with pytest.raises(Stop):
        train(model, cfg, batches.batch_at, hooks=TrainHooks(), device="meta")
    ((tensors, params),) = seen
    assert params == {torch.device("meta")}
    assert set(tensors) == {"input_ids", "attention_mask", "labels"}
    assert set(tensors.values()) == {torch.device("meta")}, tensors


def test_a_cpu_run_trains_where_the_model_is_and_every_batch_is_there(tiny, monkeypatch):
    model, tok = _lora(tiny)
    cfg = TrainConfig(steps=2, batch=2, grad_accum=2, seq_len=32, warmup=0)
    seen = _spy(monkeypatch, stop=False)
    state = train(model, cfg, load_data("domain", tok, cfg).batch_at, hooks=TrainHooks())
    assert state.step == 2 and state.tokens == 2 * 2 * 32 and len(seen) == 4
    cpu = torch.device("cpu")
    assert all(set(t.values()) == {cpu} and p == {cpu} for t, p in seen)


def test_bf16_auto_is_on_for_a_gpu_and_leaves_a_cpu_runs_config_as_before(tiny):
    cfg = TrainConfig()
    assert cfg.bf16 == "auto"
    assert cfg.on("cpu").bf16 is False and cfg.on(torch.device("cuda", 3)).bf16 is True
    assert TrainConfig(bf16=True).on("cpu").bf16 is True and TrainConfig(bf16=False).on("cuda").bf16 is False
    assert cfg.on("cpu") == TrainConfig(bf16=False)  # a CPU run's fingerprint and stored recipe: unchanged

    class Data:
        fingerprint = "d"

    base = {"hash": "h"}
    tune = tiny_config("lora")
    assert fingerprint_of(base, tune, cfg.on("cpu"), Data) == fingerprint_of(base, tune, TrainConfig(bf16=False), Data)
    for value in (True, False, "auto"):
        assert train_config_from_dict({"bf16": value}, "r.yaml").bf16 == value
    with pytest.raises(Exception, match="bf16 must be true, false or auto"):
        train_config_from_dict({"bf16": "yes"}, "r.yaml")


def test_a_pruned_weights_mask_and_mezos_direction_follow_the_parameter(tiny):
    model, _ = tiny
    w = model.model.layers[0].mlp.up_proj.weight
    with torch.no_grad():
        w[:, ::2] = 0  # half zeros: a pruned matrix, its mask kept
    unfreeze(model, tiny_config("full"))
    assert keep_mask(w).device.type == "cpu"
    moved = torch.nn.Parameter(w.detach().to("meta"))  # the weight on a GPU, its mask made on the CPU
    moved._efflm_keep = w._efflm_keep
    assert keep_mask(moved).device.type == "meta" and keep_mask(moved).shape == w.shape
    mezo = MeZO(torch.nn.Linear(8, 4).to("meta"))
    i, p = next(iter(mezo.params.values()))
    z = mezo.z(i, p, step_seed=1)  # drawn on the CPU from its seed, then where the parameter is
    assert z.device.type == "meta" and z.shape == p.shape


@pytest.mark.parametrize("env", ["ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED"])
def test_sharded_launches_are_refused_before_any_weights_load(env, tmp_path, monkeypatch):
    import efflm.io.load
    from efflm import trainer
    from efflm.core.errors import EfflmError

    monkeypatch.setenv(env, "true")
    monkeypatch.setattr(efflm.io.load, "load", lambda *a, **k: pytest.fail("weights loaded"))
    with pytest.raises(EfflmError, match="FSDP / DeepSpeed sharding is not supported"):
        trainer.finetune("tiny-llama", [], tiny_config("lora"), TrainConfig(steps=1), "domain", tmp_path / "o")
    assert not (tmp_path / "o").exists()
