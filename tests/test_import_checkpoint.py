"""Issue 17 item 1: published checkpoints (DiT, SiT, U-ViT, LDM key layouts) imported into harness checkpoints,
tested on small networks the tests build and save in the official layouts (nothing is downloaded)."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from core.errors import InputError
from models.networks import parameter_count
from pipeline.checkpoints import load_network, save_checkpoint
from pipeline.import_checkpoint import PRESETS, import_checkpoint, main
from pipeline.runconfig import build_network
from pipeline.sample import main as sample_main

DIT_RUN = {"network": {"name": "DiT-T/2", "input_size": 8, "in_channels": 1, "num_classes": 10, "learn_sigma": True,
                       "class_dropout_prob": 0.1},
           "schedule": "ddpm-linear", "prediction": "noise", "input_scale": {"factor": 1.0}}
UNET_RUN = {"network": {"name": "LDM-UNet-T", "input_size": 8, "in_channels": 1, "num_classes": 10,
                        "learn_sigma": False},
            "schedule": "flow-linear", "prediction": "velocity", "input_scale": {"factor": 1.0}}


def random_weights(run: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    net = build_network(run["network"])
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return {k: v.clone() for k, v in net.state_dict().items()}


def test_a_dit_state_dict_imports_and_samples_like_the_harness_network(tmp_path):
    """DiT's released file is a bare state dict of models.py's keys: imported, it samples through the CLI exactly
    as a harness checkpoint holding the same weights."""
    weights = random_weights(DIT_RUN)
    official = tmp_path / "DiT-T-2-official.pt"
    torch.save(weights, official)
    record = import_checkpoint(official, tmp_path / "imported.pt", DIT_RUN, "dit", step=7000)
    assert record["sha256"] == hashlib.sha256(official.read_bytes()).hexdigest() and record["layout"] == "dit"
    save_checkpoint(tmp_path / "own.pt", {"step": 7000, "model": weights, "ema": weights, "config": DIT_RUN,
                                          "data_std": 1.0})
    net, run, ckpt = load_network(tmp_path / "imported.pt")
    assert ckpt["source"] == record and ckpt["step"] == 7000
    assert all(torch.equal(net.state_dict()[k], weights[k]) for k in weights)
    outs = []
    for name in ("imported", "own"):
        out = tmp_path / f"{name}.npz"
        assert sample_main(["--ckpt", str(tmp_path / f"{name}.pt"), "--sampler", "ddpm", "--steps", "5",
                            "--cfg-scale", "1.5", "--legacy-cfg-channels", "3", "--num-samples", "6",
                            "--batch-size", "6", "--micro-batch", "6", "--autoencoder", "identity", "--out",
                            str(out), "--no-progress"]) == 0
        with np.load(out) as data:
            outs.append(data["arr_0"].copy())
    assert np.array_equal(outs[0], outs[1])


def test_a_training_checkpoint_gives_its_ema(tmp_path):
    ema, raw = random_weights(DIT_RUN, 1), random_weights(DIT_RUN, 2)
    official = tmp_path / "0400000.pt"
    torch.save({"model": raw, "ema": ema, "opt": {}, "args": None}, official)   # DiT/SiT train.py's save
    import_checkpoint(official, tmp_path / "imported.pt", DIT_RUN, "sit", step=400000)
    net, _, _ = load_network(tmp_path / "imported.pt")
    assert all(torch.equal(net.state_dict()[k], ema[k]) for k in ema)


def test_an_ldm_checkpoint_loses_its_prefix_and_keeps_its_class_embedder(tmp_path):
    weights = random_weights(UNET_RUN)
    state = {f"model.diffusion_model.{k}": v for k, v in weights.items() if not k.startswith("class_embedder.")}
    state["cond_stage_model.embedding.weight"] = weights["class_embedder.embedding.weight"]
    state["first_stage_model.decoder.conv_in.weight"] = torch.zeros(3)   # the VAE: not the network's
    official = tmp_path / "cin256-v2.ckpt"
    torch.save({"state_dict": state, "global_step": 12}, official)
    import_checkpoint(official, tmp_path / "imported.pt", UNET_RUN, "ldm", step=12)
    net, _, _ = load_network(tmp_path / "imported.pt")
    assert all(torch.equal(net.state_dict()[k], weights[k]) for k in weights)


@pytest.mark.parametrize(("change", "message"), [
    (lambda s: s.pop("final_layer.linear.bias"), "no weight 'final_layer.linear.bias'"),
    (lambda s: s.__setitem__("pos_embed", torch.zeros(1, 2, 3)), "weight 'pos_embed' has shape (1, 2, 3)"),
    (lambda s: s.__setitem__("extra.weight", torch.zeros(1)), "weight 'extra.weight' is not part of DiT-T/2"),
])
def test_a_strict_key_and_shape_check_names_the_first_mismatch(tmp_path, change, message):
    weights = random_weights(DIT_RUN)
    change(weights)
    official = tmp_path / "bad.pt"
    torch.save(weights, official)
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        import_checkpoint(official, tmp_path / "out.pt", DIT_RUN, "dit", step=1)
    assert not (tmp_path / "out.pt").exists()


def test_the_cli_imports_with_a_run_json_and_refuses_bad_input(tmp_path, capsys):
    official = tmp_path / "w.pt"
    torch.save(random_weights(DIT_RUN), official)
    run_json = tmp_path / "run.json"
    run_json.write_text(json.dumps(DIT_RUN))
    assert main([str(official), "--run-json", str(run_json), "--layout", "dit", "--step", "5", "--out",
                 str(tmp_path / "c.pt")]) == 0
    assert "DiT-T/2" in capsys.readouterr().out
    with pytest.raises(InputError, match="give --preset, or --run-json with --layout"):
        main([str(official), "--out", str(tmp_path / "d.pt")])
    with pytest.raises(InputError, match="checkpoint to import not found"):
        main([str(tmp_path / "none.pt"), "--preset", "dit-xl-2-256", "--out", str(tmp_path / "e.pt")])
    with pytest.raises(InputError, match="not both"):
        main([str(official), "--preset", "dit-xl-2-256", "--run-json", str(run_json), "--out", str(tmp_path / "f.pt")])
    with pytest.raises(InputError, match="--step: expected an integer >= 0"):
        main([str(official), "--run-json", str(run_json), "--layout", "dit", "--step", "-1", "--out",
              str(tmp_path / "g.pt")])
    assert main([str(official), "--run-json", str(run_json), "--layout", "dit", "--step", "0", "--out",
                 str(tmp_path / "h.pt")]) == 0


def test_presets_describe_the_published_networks():
    """DiT-XL/2 with learned sigma has 675M parameters (DiT paper, Table 4); SiT-XL/2 is the same backbone."""
    for name in ("dit-xl-2-256", "sit-xl-2-256"):
        network = dict(PRESETS[name]["run"]["network"])
        count = parameter_count(network.pop("name"), **network)
        assert count == pytest.approx(675e6, rel=0.01)
    assert PRESETS["dit-xl-2-512"]["run"]["network"]["input_size"] == 64
    assert PRESETS["sit-xl-2-256"]["run"]["schedule"] == "flow-linear"


@pytest.mark.parametrize(("layout", "run"), [("dit", DIT_RUN), ("sit", DIT_RUN), ("uvit", UNET_RUN), ("ldm", UNET_RUN)])
def test_export_writes_the_official_layout_that_imports_back_exactly(tmp_path, layout, run):
    """--export (the calibration stand-ins) writes a harness checkpoint's EMA in the reference code's layout: a bare
    state dict for DiT/SiT/U-ViT (as DiT-XL-2-256x256.pt), LDM's prefixed `state_dict`; importing it gives the
    same weights, and the source record names the file a link points to."""
    ema = random_weights(run, 3)
    save_checkpoint(tmp_path / "own.pt", {"step": 9, "model": random_weights(run, 4), "ema": ema, "config": run,
                                          "data_std": 1.0})
    assert main([str(tmp_path / "own.pt"), "--export", "--layout", layout, "--out", str(tmp_path / "off.pt")]) == 0
    raw = torch.load(tmp_path / "off.pt", weights_only=True)
    if layout == "ldm":
        assert set(raw) == {"state_dict"} and "cond_stage_model.embedding.weight" in raw["state_dict"]
        assert all(k.startswith("model.diffusion_model.") for k in raw["state_dict"] if not k.startswith("cond_"))
    else:
        assert set(raw) == set(ema)
    (tmp_path / "link.pt").symlink_to(tmp_path / "off.pt")
    record = import_checkpoint(tmp_path / "link.pt", tmp_path / "back.pt", run, layout, step=9)
    assert record["file"].endswith("off.pt")
    net, _, _ = load_network(tmp_path / "back.pt")
    assert all(torch.equal(net.state_dict()[k], ema[k]) for k in ema)
    with pytest.raises(InputError, match="--export takes --layout"):
        main([str(tmp_path / "own.pt"), "--export", "--out", str(tmp_path / "x.pt")])


def test_the_run_config_may_be_given_inline(tmp_path):
    """The import rule passes the registry's run as a JSON object (no file), as the training rule does."""
    official = tmp_path / "w.pt"
    torch.save(random_weights(DIT_RUN), official)
    assert main([str(official), "--run-json", json.dumps(DIT_RUN), "--layout", "dit", "--out",
                 str(tmp_path / "c.pt")]) == 0
    with pytest.raises(InputError, match="--run-json: not JSON"):
        main([str(official), "--run-json", "{not json", "--layout", "dit", "--out", str(tmp_path / "d.pt")])
    assert not (tmp_path / "d.pt").exists()
