"""``--model org/name``: a model already in the local Hugging Face cache, never downloaded."""

import shutil
import socket

import pytest

from efflm.cli import main
from efflm.core.errors import EfflmError
from efflm.models import sources

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A plain Hugging Face directory of the tiny model (config, safetensors, tokenizer files)."""
    from efflm.io.load import load
    from efflm.io.save import save

    model, tok = load("tiny-llama")
    return save(model, tok, tmp_path_factory.mktemp("tiny") / "m")


def lay_out(cache, repo_id: str, files_from) -> None:
    """The hub cache's layout: ``models--org--name/{refs/main, snapshots/<commit>/..., blobs}``."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    (repo / "blobs").mkdir()
    snap = repo / "snapshots" / COMMIT
    snap.mkdir(parents=True)
    for f in files_from.iterdir():
        if f.name.startswith("efflm"):
            continue  # an ordinary hub checkpoint: no efflm files
        blob = repo / "blobs" / f"blob-{f.name}"
        shutil.copy(f, blob)
        (snap / f.name).symlink_to(blob)


@pytest.fixture
def hub(tmp_path, tiny_dir, monkeypatch):
    cache = tmp_path / "hub"
    lay_out(cache, "acme/tiny-llama", tiny_dir)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.chdir(tmp_path)  # no directory named acme/ here

    def no_network(*a, **k):
        raise AssertionError("the network was reached")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    return cache


def test_resolve_gives_the_snapshot_and_keeps_the_id(hub):
    src = sources.resolve("acme/tiny-llama")
    assert src == sources.Source("hf", hub / "models--acme--tiny-llama" / "snapshots" / COMMIT, "acme/tiny-llama")
    assert sources.model_config("acme/tiny-llama").model_type == "llama"
    assert sources.load_tokenizer("acme/tiny-llama").chat_template


def test_load_by_id_equals_the_directory(hub, tiny_dir):
    import torch

    from efflm.io.load import load

    by_id, _ = load("acme/tiny-llama")
    by_dir, _ = load(str(tiny_dir))
    assert all(torch.equal(a, b) for a, b in zip(by_id.state_dict().values(), by_dir.state_dict().values()))
    assert sources.content_hash("acme/tiny-llama") == sources.content_hash(str(tiny_dir))


def test_eval_by_id(hub, capsys):
    code = main(["eval", "--model", "acme/tiny-llama", "--seq-len", "32", "--windows", "2"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.startswith("ppl ") and "(2 windows of 32)" in out


def test_absent_id_is_one_line_naming_the_cache(hub, capsys):
    code = main(["eval", "--model", "acme/missing", "--seq-len", "32", "--windows", "2"])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1
    assert lines[0] == (
        f"efflm: error: model 'acme/missing' is not in the local Hugging Face cache ({hub}); "
        "download it first or give a directory"
    )


def test_hf_home_is_honoured(tmp_path, tiny_dir, monkeypatch):
    lay_out(tmp_path / "home" / "hub", "acme/other", tiny_dir)
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    assert sources.hub_cache_dir() == tmp_path / "home" / "hub"
    assert sources.resolve("acme/other").path.parent.parent.name == "models--acme--other"


def test_an_existing_directory_wins_over_the_cache(hub, tmp_path, tiny_dir):
    shutil.copytree(tiny_dir, tmp_path / "acme" / "tiny-llama")
    src = sources.resolve("acme/tiny-llama")
    assert src.path.resolve() == (tmp_path / "acme" / "tiny-llama").resolve() and src.model_id == "acme/tiny-llama"


@pytest.mark.parametrize("spec", ["acme/a/b", "/abs/path", "acme/..", "./rel"])
def test_specs_that_are_not_hub_ids_are_paths(hub, spec):
    with pytest.raises(EfflmError, match="model not found"):
        sources.resolve(spec)


def test_a_snapshot_without_config_is_not_a_model(hub, tiny_dir, tmp_path):
    lay_out(hub, "acme/broken", tiny_dir)
    (hub / "models--acme--broken" / "snapshots" / COMMIT / "config.json").unlink()
    with pytest.raises(EfflmError, match="not a model directory"):
        sources.resolve("acme/broken")
