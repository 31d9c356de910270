"""workflow/rules/data.smk: config → commands, and the rules run end to end on the digits."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from core.io import DataSourceError
from pipeline.data_config import (
    autoencoder_spec,
    check_data_sources,
    latents_cli_args,
    reference_cli_args,
    reference_plan,
)
from tests.test_data_helpers import make_image_tree

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).with_name("snakemake")

MINI = {
    "datasets": {"digits": {"kind": "digits", "num_classes": 10}},
    "autoencoders": {"identity": {"kind": "identity"}},
    "references": {"digits-8": "built"},
    "scale": "mini",
}


def _paper_like(tmp_path: Path) -> dict:
    return {
        "weights_dir": str(tmp_path / "weights"),
        "datasets": {"imagenet": {"kind": "imagefolder", "root": str(tmp_path / "tree"), "num_classes": 3}},
        "autoencoders": {"sd-vae-ft-ema": {"kind": "sd-vae", "path": "stabilityai/sd-vae-ft-ema",
                                           "posterior": "mean"}},
        "references": {"imagenet-256": str(tmp_path / "VIRTUAL_imagenet256_labeled.npz"),
                       "imagenet-16": {"num": 4, "seed": 2}},
        "latents": {"shard_size": 256},
        "scale": "paper",
    }


def test_config_translation():
    assert reference_cli_args(MINI, "digits-8") == ["reference", "--dataset", "digits", "--split", "reference",
                                                    "--image-size", "8", "--seed", "0"]
    args = latents_cli_args(MINI, "digits", 8, "identity", flip=True)
    assert args[:2] == ["--dataset", "digits"] and args[-1] == "--flip" and "--root" not in args
    with pytest.raises(DataSourceError, match="8 px only"):
        latents_cli_args(MINI, "digits", 16, "identity", flip=False)
    with pytest.raises(DataSourceError, match="unknown autoencoder"):
        autoencoder_spec(MINI, "sd-vae-ft-mse")


def test_paper_like_config_translation_and_checks(tmp_path):
    config = _paper_like(tmp_path)
    assert reference_plan(config, "imagenet-256") == {"source": "npz", "image_size": 256,
                                                      "root": str(tmp_path / "VIRTUAL_imagenet256_labeled.npz")}
    assert reference_plan(config, "imagenet-16") == {"source": "imagefolder", "root": str(tmp_path / "tree"),
                                                     "image_size": 16, "num": 4, "seed": 2}
    args = latents_cli_args(config, "imagenet", 256, "sd-vae-ft-ema", flip=False, num_workers=7)
    flags = dict(zip(args[:-1:2], args[1::2]))
    assert flags["--autoencoder"] == "stabilityai/sd-vae-ft-ema" and flags["--posterior"] == "mean"
    assert flags["--shard-size"] == "256" and flags["--num-workers"] == "7"
    assert flags["--weights-dir"] == str(tmp_path / "weights") and args[-1] == "--no-flip"
    errors = check_data_sources(config)
    assert [e.split(":")[0] for e in errors] == ["data set imagenet", "reference imagenet-256",
                                                 "autoencoder sd-vae-ft-ema"]
    make_image_tree(tmp_path / "tree")
    np.savez(tmp_path / "VIRTUAL_imagenet256_labeled.npz", arr_0=np.zeros((2, 64, 64, 3), np.uint8))
    errors = check_data_sources(config)
    assert any("holds 64 px images, not 256 px" in e for e in errors), errors
    assert check_data_sources(MINI) == []


def _snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "SNAKEMAKE_PROFILE"}
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run([str(SNAKEMAKE), "--workflow-profile", "none", "--cores", "2", *args],
                          cwd=workdir, env=env, capture_output=True, text=True, timeout=600)


def _workflow(tmp_path: Path, config: dict) -> Path:
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    (tmp_path / "Snakefile").write_text(
        f'configfile: "config.yaml"\ninclude: "{REPO / "workflow" / "rules" / "data.smk"}"\n')
    return tmp_path


@pytest.mark.slow
def test_rules_build_digits_reference_and_latents(tmp_path):
    workdir = _workflow(tmp_path, MINI)
    targets = ["work/mini/reference/digits-8.npz", "work/mini/latents/digits-8px-identity-noflip/index.json"]
    result = _snakemake(workdir, *targets)
    assert result.returncode == 0, result.stderr[-3000:]
    with np.load(workdir / targets[0]) as npz:
        assert npz["arr_0"].shape == (300, 8, 8, 1)
    index = json.loads((workdir / targets[1]).read_text())
    assert index["num_items"] == 1497 and index["flip"] is False
    assert (workdir / "work/mini/reference/digits-8.json").exists()


def test_rules_dry_run_paper_like_commands(tmp_path):
    make_image_tree(tmp_path / "tree")
    config = _paper_like(tmp_path)
    workdir = _workflow(tmp_path, config)
    result = _snakemake(workdir, "-n", "-p", "work/paper/latents/imagenet-256px-sd-vae-ft-ema-flip/index.json",
                        "work/paper/reference/imagenet-16.npz", "work/paper/reference/imagenet-256.npz")
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout + result.stderr
    assert "-m pipeline.latents --dataset imagefolder" in out
    assert "--flip --out work/paper/latents/imagenet-256px" in out
    assert "reference --dataset imagefolder" in out and "reference --dataset npz" in out
