"""Issue 15 items 5-7: DiT's DDPM variance by default with FIXED_SMALL runnable, every alternative reading of
config/alternatives/ loadable at every scale, and cells that show the paper's second value for a sample set."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from core.errors import InputError
from models.ddpm import DDPMChain, ancestral_step
from models.samplers import SamplerConfig
from models.schedules import ddpm_linear
from pipeline.config import ConfigError, load_scale, read_yaml, scale_names
from pipeline.registry import load_registry, parse_sample_tag, sample_tag
from pipeline.report import cell_rows, paper_also_text
from pipeline.sample import check_sampler_settings, sampler_description

ROOT = Path(__file__).resolve().parents[1]
ALTERNATIVES = sorted((ROOT / "config" / "alternatives").glob("*.yaml"))


def _iddpm_variances(ks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """FIXED_LARGE and FIXED_SMALL of guided-diffusion's gaussian_diffusion.py (p_mean_variance), for DDPM linear
    betas respaced to the indices ``ks`` as respace.py does (betas from consecutive alphas_cumprod)."""
    abar_full = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000, dtype=np.float64))
    abar = abar_full[ks]
    abar_prev = np.append(1.0, abar[:-1])
    betas = 1 - abar / abar_prev
    posterior = betas * (1 - abar_prev) / (1 - abar)
    return np.append(posterior[1], betas[1:]), np.append(posterior[1], posterior[1:])


@pytest.mark.parametrize("steps", [1000, 250, 50])
def test_fixed_large_is_iddpm_and_dits_default(steps):
    chain = DDPMChain.from_schedule(ddpm_linear(), steps)
    large, small = _iddpm_variances(chain.ks.numpy())
    assert np.allclose(torch.exp(chain.fixed_large_log_variance).numpy(), large, rtol=1e-10)
    assert np.allclose(torch.exp(chain.posterior_log_variance_clipped).numpy(), small, rtol=1e-10)
    if steps == 1000:  # worked numbers: beta_999 = 0.02, beta_1 = 1e-4 + 0.0199/999
        assert large[999] == pytest.approx(0.02, rel=1e-12)
        assert large[1] == pytest.approx(1e-4 + 0.0199 / 999, rel=1e-12)


@pytest.mark.parametrize("variance", ["fixed-large", "fixed-small"])
def test_an_ancestral_step_adds_noise_of_the_chosen_variance(variance):
    chain = DDPMChain.from_schedule(ddpm_linear(), 250)
    large, small = _iddpm_variances(chain.ks.numpy())
    x, eps, noise = (torch.randn(1, 4, 3, 3, dtype=torch.float64) for _ in range(3))
    i = 100
    with_noise = ancestral_step(chain, x, i, eps, None, noise, variance)
    without = ancestral_step(chain, x, i, eps, None, torch.zeros_like(noise), variance)
    std = math.sqrt((large if variance == "fixed-large" else small)[i])
    assert torch.allclose(with_noise - without, std * noise, rtol=1e-9)


def test_the_variance_is_a_checked_sampler_setting_and_part_of_the_identity():
    assert SamplerConfig(kind="ddpm").ddpm_variance == "fixed-large"
    with pytest.raises(ValueError, match="ddpm_variance"):
        SamplerConfig(kind="ddpm", ddpm_variance="fixed")
    with pytest.raises(InputError, match="--ddpm-variance"):
        check_sampler_settings(sampler="ddpm", steps=10, cfg_scale=1.0, atol=1e-6, rtol=1e-3, seed=0, micro_batch=4,
                               ddpm_variance="large")
    small = SamplerConfig(kind="ddpm", ddpm_variance="fixed-small")
    assert sampler_description(small)["variance"] == "fixed-small"
    assert sampler_description(small, learned_sigma=True)["variance"] == "learned-range"
    assert "variance" not in sampler_description(SamplerConfig(kind="dopri5"))


def test_sample_tags_name_the_fixed_small_alternative_only():
    large, small = {"kind": "ddpm", "steps": 250, "variance": "fixed-large"}, {"kind": "ddpm", "steps": 250,
                                                                                  "variance": "fixed-small"}
    assert sample_tag(large, 1.0, 10, 0) == sample_tag({"kind": "ddpm", "steps": 250}, 1.0, 10, 0) == \
        "ddpm250-cfg1-n10-seed0"
    assert sample_tag(small, 1.0, 10, 0) == "ddpm250small-cfg1-n10-seed0"
    assert parse_sample_tag("ddpm250small-cfg1-n10-seed0")["variance"] == "fixed-small"


def test_learned_sigma_cells_sample_without_a_fixed_variance():
    registry, _ = load_registry(load_scale("mini"))
    ddpm = [c for cells in registry.cells.values() for c in cells if c.sampler["kind"] == "ddpm"]
    learned = [c for c in ddpm if registry.runs[c.run_id]["network"].get("learn_sigma")]
    fixed = [c for c in ddpm if not registry.runs[c.run_id]["network"].get("learn_sigma")]
    assert learned and fixed
    assert all("variance" not in c.sampler for c in learned)
    assert all(c.sampler["variance"] == "fixed-large" for c in fixed)


@pytest.mark.parametrize("scale", scale_names())
@pytest.mark.parametrize("alternative", ALTERNATIVES, ids=lambda p: p.stem)
def test_every_alternative_loads_at_every_scale_and_changes_something(alternative, scale):
    base = load_scale(scale)
    changed = load_scale(scale, extra_files=[alternative])
    if scale == "paper" or alternative.stem != "train-fp32":  # mini and smoke train in fp32 already
        assert changed["protocols"] != base["protocols"]
    assert set(changed) == set(base)
    assert load_scale(scale, overrides=changed) == changed  # a loaded config loads to itself


def test_the_alternatives_do_what_their_files_say():
    def protocols(name: str) -> dict:
        return load_scale("paper", extra_files=[ROOT / "config" / "alternatives" / f"{name}.yaml"])["protocols"]

    assert {p["precision"] for p in protocols("train-fp32").values()} == {"fp32"}
    assert {p["tf32"] for p in protocols("train-fp32").values()} == {True}   # fp32 + TF32, as DiT/SiT train.py
    assert {p["samplers"]["ddpm"]["variance"] for p in protocols("ddpm-fixed-small").values()} == {"fixed-small"}
    assert {p["cfg_channels"] for p in protocols("cfg-all-channels").values()} == {"all"}
    unit = protocols("time-input-unit")
    assert unit["table3_uvit"]["network"]["time_input"] == unit["table3_unet"]["network"]["time_input"] == "unit"
    assert "time_input" not in unit["section4"]["network"]
    base, _ = load_registry(load_scale("mini"))
    alt, _ = load_registry(load_scale("mini", extra_files=[ROOT / "config" / "alternatives" / "time-input-unit.yaml"]))
    changed = set(alt.runs) - set(base.runs)
    assert changed and all(r.startswith("table3_") for r in changed)


def test_the_alternatives_readme_lists_every_file():
    text = (ROOT / "config" / "alternatives" / "README.md").read_text()
    for path in ALTERNATIVES:
        assert f"`{path.name}`" in text
        assert "protocol_overrides" in read_yaml(path)


def test_protocol_overrides_are_checked():
    with pytest.raises(ConfigError, match="unknown protocol"):
        load_scale("mini", overrides={"protocol_overrides": {"sectoin3": {"flip": True}}})
    with pytest.raises(ConfigError, match="precison"):
        load_scale("mini", overrides={"protocol_overrides": {"all": {"precison": "fp32"}}})


def test_an_alternative_runs_through_snakemake_as_the_readme_says(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--workflow-profile", "none",
         "--directory", str(tmp_path), "-n", "-p", "results/mini/fig2.csv", "--cores", "2",
         "--configfile", str(ROOT / "config" / "alternatives" / "ddpm-fixed-small.yaml")],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    samples = [line for line in proc.stdout.splitlines() if "-m pipeline.sample " in line and "--sampler ddpm" in line]
    assert samples and all("--ddpm-variance fixed-small" in line for line in samples)
    assert "ddpm50small-cfg1" in proc.stdout


def test_cells_with_a_second_paper_value_show_it_with_its_source():
    registry, _ = load_registry(load_scale("mini"))
    by_id = {(c.experiment, c.id): c for cells in registry.cells.values() for c in cells}
    pairs = {("fig1", "sit-400k"): ("fig7", "none-400k"), ("fig1", "fasterdit-400k"): ("fig7", "both-400k")}
    for one, other in pairs.items():
        a, b = by_id[one], by_id[other]
        assert a.samples_path == b.samples_path                         # the same sample set ...
        assert a.paper_also[0]["fid"] == b.paper["fid"] and b.paper_also[0]["fid"] == a.paper["fid"]  # ... both values
    record = {"experiment": "fig1", "cell": "sit-400k", "scale": "mini", "seeds": [0],
              "spec": {"block": "right", "coords": {}, "milestone": 400000, "step": 1, "cfg": 1.0, "num_samples": 8},
              "summary": {"fid": {"mean": 20.0, "low": None, "high": None, "n": 1}},
              "paper": {"fid": 17.2}, "paper_also": by_id[("fig1", "sit-400k")].paper_also}
    row = cell_rows(record)[0]
    assert row["paper"] == 17.2 and row["difference"] == pytest.approx(2.8)   # judged against `paper` only
    assert row["paper_also"].startswith("18.5 (Fig. 7 none-400k")
    assert paper_also_text([], "fid") == ""


def test_list_overrides_from_the_command_line_arrive_as_numbers(tmp_path):
    """`--config std_grid=[0.3,1.0]` reaches the config as strings (issue 19, item 3): read as numbers."""
    config = load_scale("mini", overrides={"std_grid": ["0.3", "1.0"], "audit_alternatives": ["fig1_sd3"]})
    assert config["std_grid"] == [0.3, 1.0] and config["audit_alternatives"] == ["fig1_sd3"]
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--workflow-profile", "none",
         "--directory", str(tmp_path), "-n", "results/mini/fig2.csv", "--cores", "1", "--config", "std_grid=[0.3,1.0]"],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "std1-" in proc.stdout and "std2.5" not in proc.stdout
