"""The typed run config: one set of defaults, a lossless JSON round trip, and unknown keys refused."""

from __future__ import annotations

import copy
import pickle

import pytest

from pipeline.runconfig import RUN_DEFAULTS, RunConfig, with_defaults
from pipeline.sample import SampleOptions
from pipeline.sample import _parser as sample_parser
from pipeline.train import TrainOptions
from pipeline.train import _parser as train_parser

RUN = {"network": {"name": "DiT-T/2", "input_size": 8, "in_channels": 1, "num_classes": 10},
       "input_scale": {"target_std": 0.82}, "timesteps": {"kind": "lognorm", "mu": 0.0, "sigma": 1.0},
       "optimizer": {"lr": 1e-3}, "latents": "work/latents/x"}


def test_to_json_is_the_merged_dict_and_round_trips():
    config = RunConfig.from_json(RUN)
    assert config.to_json() == with_defaults(RUN)
    assert list(config.to_json()) == list(with_defaults(RUN))          # key order decides nothing, but is kept
    assert RunConfig.from_json(config.to_json()).to_json() == config.to_json()
    assert config.optimizer.lr == 1e-3 and config.optimizer.betas == tuple(RUN_DEFAULTS["optimizer"]["betas"])
    assert pickle.loads(pickle.dumps(config)).to_json() == config.to_json()
    assert copy.deepcopy(config).config_hash() == config.config_hash()


@pytest.mark.parametrize("bad, key", [
    ({"lerning_rate": 1e-4}, "lerning_rate"),
    ({"optimizer": {"lrr": 1e-4}}, "lrr"),
])
def test_unknown_keys_are_refused_by_name(bad, key):
    with pytest.raises(ValueError, match=key):
        RunConfig.from_json({**RUN, **bad})


def test_a_run_needs_a_network():
    with pytest.raises(ValueError, match="network"):
        RunConfig.from_json({"schedule": "flow-linear"})


def test_stage_options_are_filled_by_argparse_in_one_place():
    args = train_parser().parse_args(["--run-json", "{}", "--start", "0", "--stop", "5", "--out", "o.pt",
                                      "--rolling-dir", "r", "--log-dir", "l", "--log-every", "7",
                                      "--no-loss-plot"])
    options = TrainOptions.from_args(args)
    assert options.log_every == 7 and options.loss_plot is False and options.rolling_every_minutes == 30.0
    args = sample_parser().parse_args(["--ckpt", "c.pt", "--out", "s.npz", "--num-samples", "12", "--raw-weights",
                                       "--sampler", "heun", "--steps", "4"])
    options = SampleOptions.from_args(args)
    assert (options.num_samples, options.use_ema, options.sampler, options.steps) == (12, False, "heun", 4)
    assert options.sampler_config().kind == "heun"
