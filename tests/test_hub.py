"""`python -m sdkit push`, up to the network boundary: the upload folder (weights that load, the sample grid, a card
the Hub can read), the two Hub calls in order, a token that stays in memory, and a clear error without one."""
import pytest
import yaml
from safetensors import safe_open

import sdkit
from sdkit.cli import main
from sdkit.hub import HubError, model_card, push

TOKEN = "hf_sdkitTestTokenThatMustNeverBeWritten"
SD15 = "stable-diffusion-v1-5/stable-diffusion-v1-5"


@pytest.fixture(scope="module")
def lora_run(tiny_model, data8, tmp_path_factory):
    config = sdkit.TrainConfig(model=str(tiny_model), data=str(data8), steps=2, resolution=32, sample_steps=2,
                               tensorboard=False, lr=1e-3, trigger_token="sks", sample_at_start=False,
                               out=str(tmp_path_factory.mktemp("hub") / "squares"))
    return sdkit.train(config, progress=None)


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_dry_run_writes_weights_grid_and_a_card_the_hub_reads(lora_run, data8, tiny_model, tmp_path, capsys):
    up = tmp_path / "upload"
    assert main(["push", str(lora_run.path), "--repo", "me/squares-lora", "--dry-run", str(up),
                 "--base-model", SD15]) == 0
    assert "nothing sent" in capsys.readouterr().out
    names = sorted(p.name for p in up.iterdir())
    assert names == ["README.md", "grid.png", "pytorch_lora_weights.safetensors", "squares-lora.safetensors"]
    assert (up / "grid.png").read_bytes() == lora_run.grid().read_bytes()
    with safe_open(str(up / "squares-lora.safetensors"), "pt") as f:  # the kohya file
        assert all(k.startswith("lora_unet_") for k in f.keys())
        meta = f.metadata()
    # the public files name local folders by their names only, never by their paths on this machine
    for p in up.iterdir():
        data = p.read_bytes()
        assert str(data8).encode() not in data and str(tiny_model).encode() not in data, p.name
    assert meta["ss_training_comment"].endswith(f"on {data8.name}")

    card = (up / "README.md").read_text()
    meta = front_matter(card)
    assert meta["base_model"] == SD15 and meta["library_name"] == "diffusers"
    assert meta["license"] == "creativeml-openrail-m"
    assert {"stable-diffusion", "text-to-image", "lora", "sdkit"} <= set(meta["tags"])
    assert "sks" in meta["instance_prompt"]
    assert "**Trigger:** `sks`" in card and "![samples](grid.png)" in card
    assert 'pipe.load_lora_weights("me/squares-lora", weight_name="squares-lora.safetensors")' in card
    assert "| rank / alpha | 4 / 4 |" in card and "| steps | 2 (trained to step 2) |" in card
    assert f"8 images from a folder named `{data8.name}`" in card and sdkit.__version__ in card


def test_a_local_base_model_is_named_in_the_text_not_as_base_model(lora_run, tmp_path):
    """The Hub rejects a base_model that is not a model id; a local pipeline folder goes in the text only."""
    card = model_card(lora_run, "me/x", {"grid": None})
    meta = front_matter(card)
    assert "base_model" not in meta and "a local pipeline (`tiny-sd`)" in card
    assert meta["license"] == "creativeml-openrail-m"
    assert front_matter(model_card(lora_run, "me/x", {"grid": None}, license="mit"))["license"] == "mit"


def test_push_creates_the_repo_then_uploads_the_folder_and_never_writes_the_token(lora_run, tmp_path, monkeypatch,
                                                                                  capsys):
    import huggingface_hub
    calls = []

    class FakeHfApi:
        def __init__(self, token=None):
            calls.append(("HfApi", token))

        def create_repo(self, repo_id, **kw):
            calls.append(("create_repo", repo_id, kw["private"], kw["exist_ok"]))

        def upload_folder(self, repo_id, folder_path, **kw):
            from pathlib import Path
            files = sorted(p for p in Path(folder_path).rglob("*") if p.is_file())
            calls.append(("upload_folder", repo_id, sorted(p.name for p in files)))
            for p in files:  # the folder is temporary: look now
                assert TOKEN.encode() not in p.read_bytes(), p

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHfApi)
    assert main(["push", str(lora_run.path), "--repo", "me/squares-lora", "--private"]) == 0
    assert calls == [("HfApi", TOKEN), ("create_repo", "me/squares-lora", True, True),
                     ("upload_folder", "me/squares-lora", ["README.md", "grid.png", "pytorch_lora_weights.safetensors",
                                                           "squares-lora.safetensors"])]
    out = capsys.readouterr()
    assert "https://huggingface.co/me/squares-lora" in out.out and TOKEN not in out.out + out.err
    for p in lora_run.path.rglob("*"):  # nothing in the run directory either
        assert not p.is_file() or TOKEN.encode() not in p.read_bytes(), p

    # an injected api (a notebook's own client) gets the same two calls and no token lookup
    calls.clear()
    push(lora_run, "me/other", formats="kohya", api=FakeHfApi())
    assert [c[0] for c in calls] == ["HfApi", "create_repo", "upload_folder"] and calls[2][2] == [
        "README.md", "grid.png", "other.safetensors"]

    class Refused(FakeHfApi):  # a read-only token: the Hub answers 403
        def create_repo(self, repo_id, **kw):
            raise OSError("403 Forbidden: You don't have the rights to create a model under the namespace 'me'")

    with pytest.raises(HubError, match="create_repo failed .*403.* Fix: .*write"):
        push(lora_run, "me/other", formats="kohya", api=Refused())


def test_no_token_is_a_clear_error_before_anything_is_exported(lora_run, monkeypatch, capsys, tmp_path):
    import huggingface_hub
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)  # no login cache either
    monkeypatch.setattr("sdkit.hub.build_upload_folder", lambda *a, **k: pytest.fail("exported without a token"))
    with pytest.raises(HubError, match="HF_TOKEN") as e:
        push(lora_run, "me/squares-lora")
    assert "userdata.get(\"HF_TOKEN\")" in str(e.value) and "Secrets" in str(e.value)
    assert main(["push", str(lora_run.path), "--repo", "me/squares-lora"]) == 2
    assert capsys.readouterr().err.startswith("error: HF_TOKEN:")
    assert main(["push", str(lora_run.path), "--repo", "not a repo", "--dry-run", "x"]) == 2
    assert "--repo" in capsys.readouterr().err
    (tmp_path / "old.safetensors").write_bytes(b"stale")  # a dry run shows exactly what would go up: no leftovers
    assert main(["push", str(lora_run.path), "--repo", "me/x", "--dry-run", str(tmp_path)]) == 2
    assert "not empty" in capsys.readouterr().err
