"""Issue 15 item 3: each network family is fed the time its reference code feeds (models.families)."""

from __future__ import annotations

import pytest
import torch

from models.families import TIME_INPUT, family_of, reference_time_input
from models.losses import LossConfig, draw_training_randomness, training_losses
from models.networks import FAMILIES
from models.schedules import get_schedule
from models.timesteps import LossWeight, TimestepSampling
from pipeline.runconfig import RunConfig

T64 = torch.float64


def test_every_family_declares_its_time_input():
    assert set(TIME_INPUT) == set(FAMILIES)
    for family, names in FAMILIES.items():
        for name in names:
            assert family_of(name) == family
    assert reference_time_input("DiT-XL/2") == "unit"      # SiT feeds its DiT t in [0, 1]
    assert reference_time_input("U-ViT-L/2") == "steps"    # U-ViT sde.py: nnet(xt, t * 999)
    assert reference_time_input("LDM-UNet") == "steps"     # LDM: steps 0..999


@pytest.mark.parametrize("name", ["flow-linear", "flow-cosine"])
def test_steps_feed_u_vits_t_times_999_on_a_flow(name):
    """U-ViT's ScoreModel.predict feeds t_uvit·999 with t_uvit = 1 at noise, i.e. (1 − t)·999 here (t = 1 data):
    pure noise -> 999, data -> 0, t = 0.25 -> 749.25."""
    t = torch.tensor([0.0, 0.25, 1.0], dtype=T64)
    assert torch.equal(get_schedule(name).model_time(t), t)
    steps = get_schedule(name, time_input="steps").model_time(t)
    assert torch.allclose(steps, torch.tensor([999.0, 749.25, 0.0], dtype=T64))


@pytest.mark.parametrize("name", ["ddpm-linear", "ddpm-cosine"])
def test_ddpm_schedules_feed_the_step_index_whatever_the_time_input(name):
    s = get_schedule(name)
    k = torch.tensor([0.0, 10.0, 999.0], dtype=T64)
    t = s.time_of_index(k)
    assert torch.allclose(get_schedule(name, time_input="steps").model_time(t), k)
    assert torch.allclose(s.model_time(t), k)


def test_an_unknown_time_input_is_refused():
    with pytest.raises(ValueError, match="time_input"):
        get_schedule("flow-linear", time_input="seconds")
    with pytest.raises(Exception, match="network.time_input"):
        RunConfig.from_json({"network": {"name": "U-ViT-T/2", "time_input": "seconds"}})


def _run(name: str, **network) -> RunConfig:
    return RunConfig.from_json({"network": {"name": name, "input_size": 8, "in_channels": 1, "num_classes": 10,
                                            **network}})


def test_run_configs_default_to_the_family_and_may_override_it():
    assert _run("DiT-T/2").time_input == "unit"
    assert _run("U-ViT-T/2").time_input == "steps"
    assert _run("LDM-UNet-T").time_input == "steps"
    assert _run("U-ViT-T/2", time_input="unit").time_input == "unit"
    assert _run("U-ViT-T/2").build_schedule().time_input == "steps"
    _run("U-ViT-T/2", time_input="unit").build_network()  # not a factory argument


def test_the_training_loss_feeds_the_networks_convention():
    run = _run("U-ViT-T/2")
    net, schedule = run.build_network(), run.build_schedule()
    seen = []
    net.register_forward_pre_hook(lambda _m, args: seen.append(args[1].clone()))
    cfg = LossConfig(prediction="velocity", timesteps=TimestepSampling("uniform", 0.0, 1.0),
                     loss_weight=LossWeight("none", 5.0), direction_loss=False, direction_weight=1.0,
                     class_dropout=0.1)
    draw = draw_training_randomness((4, 1, 8, 8), schedule, cfg, torch.Generator().manual_seed(0), torch.device("cpu"))
    training_losses(net, torch.randn(4, 1, 8, 8), torch.zeros(4, dtype=torch.long), draw, schedule, cfg)
    assert torch.allclose(seen[0].double(), (1 - draw.t.double()) * 999, atol=1e-4)


def test_the_registry_names_the_time_input_of_non_dit_runs_only():
    from pipeline.config import load_scale
    from pipeline.registry import load_registry

    registry, _ = load_registry(load_scale("mini"))
    for run in registry.runs.values():
        expected = reference_time_input(run["network"]["name"])
        assert run["network"].get("time_input", "unit") == expected
        if expected == "unit":
            assert "time_input" not in run["network"]  # DiT runs keep their identity (hash) unchanged
