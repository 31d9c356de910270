"""Bad inputs of the run config, checkpoints and sampling end in one InputError line, before anything is written.

- the run-config schema (workflow/schemas/run.schema.yaml): each bad value names its key path;
- checkpoints: truncated, random, hostile or foreign files, NaN/inf weights, a zero input multiplier;
- sampling: non-finite network outputs stop before quantisation (no npz, no shard for the batch, no metrics);
  bad flags are refused before work; a held output lock refuses a second run at once.
"""

from __future__ import annotations

import collections
import io
import math
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from core.errors import InputError, run_cli
from core.locks import output_lock
from models.dit import DiT
from models.samplers import SamplerConfig
from pipeline import sample as sample_module
from pipeline.checkpoints import load_checkpoint, load_network, save_checkpoint
from pipeline.runconfig import RunConfig
from pipeline.sample import SamplingSession, build_session, main, sample_to_npz
from pipeline.sample_grid import sample_grid
from pipeline.sample_rows import NonFiniteSamplesError, sample_labels, to_uint8
from tests.test_sample import IDENTITY, _npz, _tiny_dit_checkpoint

NAN, INF = math.nan, math.inf
NETWORK = {"name": "DiT-T/2", "input_size": 8, "in_channels": 1, "num_classes": 10}
RUN = {"network": NETWORK, "input_scale": {"target_std": 0.82}}
QUICK = dict(num_samples=4, sampler="euler", steps=2, batch_size=4, micro_batch=4, autoencoder=IDENTITY,
             progress=False)


def _one_line(err: BaseException) -> str:
    text = str(err)
    assert "\n" not in text and text.strip() == text and text
    assert "weights_only=False" not in text
    return text


def _written(folder: Path) -> set[str]:
    """Files under ``folder`` a run could have written (lock files excluded: they are the lock, not output)."""
    return {str(p.relative_to(folder)) for p in folder.rglob("*")
            if p.is_file() and not (p.name.startswith(".") and p.name.endswith(".lock"))}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return _tiny_dit_checkpoint(tmp_path_factory.mktemp("good") / "flow.pt", "flow-linear", "velocity", False)


def _variant(ckpt: Path, path: Path, **changes) -> Path:
    """A copy of the good checkpoint with some entries replaced (``ema``/``model`` by a function of the old)."""
    state = load_checkpoint(ckpt)
    state.pop("format")
    for key, value in changes.items():
        state[key] = value(state[key]) if callable(value) else value
    save_checkpoint(path, state)
    return path


def _poisoned(value: float):
    def poison(weights: dict) -> dict:
        weights = {k: v.clone() for k, v in weights.items()}
        name = next(k for k, v in weights.items() if v.is_floating_point() and v.numel() > 1)
        weights[name].view(-1)[1] = value
        return weights
    return poison


# ---------------------------------------------------------------------------------------------
# The run config
# ---------------------------------------------------------------------------------------------

BAD_RUNS = [
    ({"optimizer": {"lr": -1}}, "optimizer.lr"),
    ({"optimizer": {"lr": NAN}}, "optimizer.lr"),
    ({"optimizer": {"lr": INF}}, "optimizer.lr"),
    ({"optimizer": {"lr": "1e-4"}}, "optimizer.lr"),
    ({"optimizer": {"weight_decay": -0.1}}, "optimizer.weight_decay"),
    ({"optimizer": {"betas": [0.9]}}, "optimizer.betas"),
    ({"optimizer": {"betas": [0.9, 1.0]}}, "optimizer.betas[1]"),
    ({"optimizer": {"betas": [-0.1, 0.999]}}, "optimizer.betas[0]"),
    ({"optimizer": {"grad_clip": -1.0}}, "optimizer.grad_clip"),
    ({"input_scale": {"target_std": 0}}, "input_scale.target_std"),
    ({"input_scale": {"target_std": -0.5}}, "input_scale.target_std"),
    ({"input_scale": {"target_std": NAN}}, "input_scale.target_std"),
    ({"input_scale": {"factor": 0.0}}, "input_scale.factor"),
    ({"input_scale": {"factor": INF}}, "input_scale.factor"),
    ({"ema_decay": 1.5}, "ema_decay"),
    ({"ema_decay": -0.1}, "ema_decay"),
    ({"ema_decay": NAN}, "ema_decay"),
    ({"global_batch": 0}, "global_batch"),
    ({"global_batch": True}, "global_batch"),
    ({"global_batch": 8.0}, "global_batch"),
    ({"global_batch": "8"}, "global_batch"),
    ({"seed": -1}, "seed"),
    ({"seed": False}, "seed"),
    ({"precision": "fp16"}, "precision"),
    ({"schedule": "ddim"}, "schedule"),
    ({"prediction": "score"}, "prediction"),
    ({"timesteps": {"kind": "beta"}}, "timesteps.kind"),
    ({"timesteps": {"kind": "lognorm", "sigma": 0.0}}, "timesteps.sigma"),
    ({"timesteps": {"kind": "lognorm", "mu": NAN}}, "timesteps.mu"),
    ({"loss_weight": {"kind": "max-snr"}}, "loss_weight.kind"),
    ({"loss_weight": {"kind": "min-snr", "gamma": 0}}, "loss_weight.gamma"),
    ({"direction_weight": -1.0}, "direction_weight"),
    ({"direction_weight": INF}, "direction_weight"),
    ({"direction_loss": "yes"}, "direction_loss"),
    ({"flip": "yes"}, "flip"),
    ({"tf32": 1}, "tf32"),
    ({"latents": 3}, "latents"),
    ({"network": {**NETWORK, "name": "DiT-Q/9"}}, "network.name"),
    ({"network": {**NETWORK, "learn_sigma": "no"}}, "network.learn_sigma"),
    ({"network": {**NETWORK, "num_classes": 0}}, "network.num_classes"),
    ({"network": {**NETWORK, "input_size": 8.5}}, "network.input_size"),
    ({"network": {**NETWORK, "class_dropout_prob": 1.5}}, "network.class_dropout_prob"),
    ({"network": {**NETWORK, "grad_checkpointing": "false"}}, "network.grad_checkpointing"),
]


@pytest.mark.parametrize("bad, key", BAD_RUNS, ids=[f"{k}={list(b.values())[0]!r}"[:60] for b, k in BAD_RUNS])
def test_a_bad_run_config_value_is_refused_naming_its_key(bad, key):
    with pytest.raises(InputError) as info:
        RunConfig.from_json({**RUN, **bad})
    message = _one_line(info.value)
    assert message.startswith(f"run config key {key!r}: expected "), message
    assert "got" in message


def test_messages_say_what_was_expected():
    cases = [({"optimizer": {"lr": -1}}, "run config key 'optimizer.lr': expected a finite number > 0, got -1"),
             ({"global_batch": True}, "run config key 'global_batch': expected an integer >= 1, got True"),
             ({"flip": "yes"}, "run config key 'flip': expected true or false, got 'yes'"),
             ({"input_scale": {"target_std": 0}},
              "run config key 'input_scale.target_std': expected null or a finite number > 0, got 0"),
             ({"optimizer": {"betas": [0.9, 1.0]}},
              "run config key 'optimizer.betas[1]': expected a finite number in [0, 1), got 1.0")]
    for bad, expected in cases:
        with pytest.raises(InputError) as info:
            RunConfig.from_json({**RUN, **bad})
        assert str(info.value) == expected
    with pytest.raises(InputError, match="unknown network"):
        RunConfig.from_json({**RUN, "network": {"name": "ResNet-50"}})


@pytest.mark.parametrize("good", [
    {"optimizer": {"grad_clip": None}}, {"optimizer": {"grad_clip": 0}}, {"optimizer": {"lr": 1}},
    {"optimizer": {"betas": [0, 0.5]}}, {"ema_decay": 0}, {"ema_decay": 1}, {"direction_weight": 0},
    {"input_scale": {"factor": 0.18215}}, {"timesteps": {"kind": "lognorm", "mu": -0.5, "sigma": 1}},
    {"loss_weight": {"kind": "min-snr", "gamma": 5}}, {"precision": "bf16"}, {"latents": None},
    {"network": {**NETWORK, "learn_sigma": True, "class_dropout_prob": 0.0}},
])
def test_edge_values_inside_the_ranges_are_accepted(good):
    config = RunConfig.from_json({**RUN, **good})
    assert RunConfig.from_json(config.to_json()).to_json() == config.to_json()


def test_target_std_zero_is_refused_in_a_stored_checkpoint_too(ckpt, tmp_path):
    bad = _variant(ckpt, tmp_path / "std0.pt", config=lambda c: {**c, "input_scale": {"target_std": 0}})
    with pytest.raises(InputError) as info:
        load_network(bad)
    message = _one_line(info.value)
    assert str(bad) in message and "'input_scale.target_std'" in message


# ---------------------------------------------------------------------------------------------
# Checkpoint files
# ---------------------------------------------------------------------------------------------


class _Payload:
    """Pickles as ``os.system(cmd)``: a checkpoint that runs a command if loaded unsafely (it never is here)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _SneakyDict(collections.OrderedDict):
    """An OrderedDict subclass: not among the types ``weights_only=True`` allows."""


def _bad_files(ckpt: Path, folder: Path) -> dict[str, Path]:
    files = {name: folder / f"{name}.pt" for name in
             ("truncated", "random", "system", "subclass", "plain_pickle", "empty", "foreign", "list")}
    files["truncated"].write_bytes(ckpt.read_bytes()[:3000])
    files["random"].write_bytes(np.random.default_rng(0).bytes(4096))
    buffer = io.BytesIO()
    torch.save({"format": 1, "payload": _Payload(folder / "PWNED")}, buffer)  # pickled, never called
    files["system"].write_bytes(buffer.getvalue())
    torch.save(_SneakyDict(format=1, step=1), files["subclass"])
    with open(files["plain_pickle"], "wb") as handle:
        pickle.dump(_SneakyDict(format=1), handle, protocol=2)
    files["empty"].write_bytes(b"")
    torch.save({"weights": torch.zeros(3)}, files["foreign"])
    torch.save([torch.zeros(3)], files["list"])
    return files


@pytest.mark.parametrize("name", ["truncated", "random", "system", "subclass", "plain_pickle", "empty", "foreign",
                                  "list"])
def test_a_bad_checkpoint_file_is_one_input_error_naming_it(ckpt, tmp_path, name):
    path = _bad_files(ckpt, tmp_path)[name]
    with pytest.raises(InputError) as info:
        load_checkpoint(path)
    message = _one_line(info.value)
    assert str(path) in message
    expected = "not a harness checkpoint" if name in ("foreign", "list") else "not a readable checkpoint"
    assert expected in message
    assert not (tmp_path / "PWNED").exists()


def test_a_missing_checkpoint_or_one_without_weights(ckpt, tmp_path):
    with pytest.raises(InputError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "none.pt")
    state = load_checkpoint(ckpt)
    state.pop("format")
    state.pop("ema")
    save_checkpoint(tmp_path / "no_ema.pt", state)
    with pytest.raises(InputError) as info:
        load_network(tmp_path / "no_ema.pt")
    assert str(tmp_path / "no_ema.pt") in _one_line(info.value) and "'ema'" in str(info.value)


def test_the_sample_cli_reports_a_hostile_checkpoint_in_one_line(ckpt, tmp_path, capsys):
    path = _bad_files(ckpt, tmp_path)["system"]
    out = tmp_path / "out"
    code = run_cli(main, ["--ckpt", str(path), "--num-samples", "2", "--out", str(out / "s.npz"),
                          "--autoencoder", "identity", "--sampler", "euler", "--steps", "2", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith(f"error: {path}: not a readable checkpoint")
    assert "weights_only=False" not in err and not (tmp_path / "PWNED").exists()
    assert not out.exists() or not _written(out)


# ---------------------------------------------------------------------------------------------
# Non-finite weights, multipliers and samples
# ---------------------------------------------------------------------------------------------


def _sample_argv(ckpt: Path, out: Path, *extra: str) -> list[str]:
    return ["--ckpt", str(ckpt), "--num-samples", "12", "--batch-size", "4", "--shard-size", "4",
            "--micro-batch", "4", "--out", str(out / "s.npz"), "--autoencoder", "identity", "--sampler", "euler",
            "--steps", "2", "--no-progress", *extra]


def _scoring_argv(tmp_path: Path, out: Path) -> list[str]:
    """--metrics-out with inputs that exist (sampling must fail before they are read)."""
    (tmp_path / "ref.npz").write_bytes(b"x")
    (tmp_path / "digits.pt").write_bytes(b"x")
    return ["--metrics-out", str(out / "m.json"), "--reference", str(tmp_path / "ref.npz"), "--extractor", "digits",
            "--extractor-weights", str(tmp_path / "digits.pt")]


@pytest.mark.parametrize("value", [NAN, INF, -INF])
def test_non_finite_ema_weights_are_refused_before_anything_is_written(ckpt, tmp_path, capsys, value):
    bad = _variant(ckpt, tmp_path / "nan_ema.pt", ema=_poisoned(value))
    out = tmp_path / "out"
    code = run_cli(main, [*_sample_argv(bad, out), *_scoring_argv(tmp_path, out)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"error: {bad}: the EMA weights hold NaN or inf (first: '"), err
    assert not out.exists() or not _written(out)  # no npz, no sidecar, no shards, no metrics
    # the raw weights are finite: they sample
    summary = sample_to_npz(bad, tmp_path / "raw" / "s.npz", use_ema=False, **QUICK)
    assert summary["checkpoint"]["weights"] == "raw" and (tmp_path / "raw" / "s.npz").is_file()


@pytest.mark.parametrize("data_std", [0.0, NAN, INF])
def test_a_zero_or_non_finite_input_multiplier_is_refused(ckpt, tmp_path, data_std):
    bad = _variant(ckpt, tmp_path / "std.pt", data_std=data_std)
    with pytest.raises(InputError) as info:
        sample_to_npz(bad, tmp_path / "out" / "s.npz", **QUICK)
    message = _one_line(info.value)
    assert str(bad) in message and "input multiplier" in message
    assert not _written(tmp_path / "out")


def test_a_network_that_outputs_nan_is_refused_before_sampling(ckpt, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(DiT, "forward", lambda self, x, t, y: torch.full_like(x, NAN))
    out = tmp_path / "out"
    code = run_cli(main, [*_sample_argv(ckpt, out), *_scoring_argv(tmp_path, out)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "the network outputs NaN or inf" in err and str(ckpt) in err
    assert not _written(out)


def _nan_for_label(monkeypatch, label: int, value: float = NAN) -> None:
    """DiT outputs ``value`` on the rows of one class (the self-check, on random rows, is skipped)."""
    forward = DiT.forward

    def poisoned(self, x, t, y):
        result = forward(self, x, t, y)
        result[y == label] = value
        return result

    monkeypatch.setattr(DiT, "forward", poisoned)
    monkeypatch.setattr(SamplingSession, "rows_are_position_invariant", lambda self: True)


def test_a_non_finite_batch_stops_before_quantisation_and_writes_nothing_for_it(ckpt, tmp_path, capsys,
                                                                                 monkeypatch):
    labels = sample_labels(0, range(12), 10).tolist()
    label = next(k for k in labels[4:] if k not in labels[:4])  # shard 0 is clean, a later one is not
    first_bad = next(i for i, k in enumerate(labels) if k == label)
    shard = first_bad // 4
    named = [i for i in range(4 * shard, 4 * shard + 4) if labels[i] == label]
    _nan_for_label(monkeypatch, label)
    out = tmp_path / "out"
    code = run_cli(main, [*_sample_argv(ckpt, out), *_scoring_argv(tmp_path, out)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"error: {ckpt}: sample(s) {', '.join(map(str, named))} hold NaN or inf after sampling; "
                          f"stopped before quantising to uint8"), err
    written = _written(out)
    assert "s.npz" not in written and "s.json" not in written and "m.json" not in written
    assert f"s.shards/shard-{shard:05d}.npz" not in written
    assert written == {f"s.shards/shard-{j:05d}.npz" for j in range(shard)}  # earlier good shards stay (resume)


def test_non_finite_dopri5_and_inf_samples_name_the_samples(ckpt, monkeypatch):
    labels = sample_labels(0, range(6), 10).tolist()
    _nan_for_label(monkeypatch, labels[2])
    named = ", ".join(str(i) for i, k in enumerate(labels) if k == labels[2])
    session, _ = build_session(ckpt, SamplerConfig("dopri5"), 0, autoencoder=IDENTITY, micro_batch=4)
    with pytest.raises(NonFiniteSamplesError) as info:
        session.generate(range(6))
    assert f"sample(s) {named} hit NaN or inf while integrating" in _one_line(info.value)
    monkeypatch.undo()
    _nan_for_label(monkeypatch, labels[2], INF)  # +inf: would have become 255 after quantisation
    session, _ = build_session(ckpt, SamplerConfig("euler", steps=1), 0, autoencoder=IDENTITY, micro_batch=4)
    with pytest.raises(NonFiniteSamplesError, match=f"sample\\(s\\) {named} hold NaN or inf after sampling"):
        session.generate(range(6))


def test_to_uint8_refuses_nan_and_inf_instead_of_mapping_them_to_0_or_255():
    for value in (NAN, INF, -INF):
        images = torch.zeros(3, 1, 2, 2)
        images[1, 0, 1, 1] = value
        with pytest.raises(NonFiniteSamplesError, match="sample\\(s\\) 1 hold NaN or inf"):
            to_uint8(images)
    assert to_uint8(torch.zeros(1, 1, 1, 1)).item() == 128


def test_a_grid_of_a_nan_checkpoint_writes_nothing(ckpt, tmp_path):
    bad = _variant(ckpt, tmp_path / "nan_ema.pt", ema=_poisoned(NAN))
    with pytest.raises(InputError, match="EMA weights hold NaN"):
        sample_grid(bad, tmp_path / "out" / "grid.png", classes=[1, 2], per_class=2, sampler="euler", steps=2,
                    autoencoder=IDENTITY, micro_batch=4)
    assert not _written(tmp_path / "out")


# ---------------------------------------------------------------------------------------------
# Flags, checked before any work
# ---------------------------------------------------------------------------------------------

BAD_FLAGS = [
    (("--num-samples", "0"), "--num-samples"), (("--batch-size", "0"), "--batch-size"),
    (("--micro-batch", "0"), "--micro-batch"), (("--shard-size", "0"), "--shard-size"),
    (("--steps", "0"), "--steps"), (("--atol", "0"), "--atol"), (("--rtol", "-0.001"), "--rtol"),
    (("--cfg-scale", "-1"), "--cfg-scale"), (("--cfg-scale", "nan"), "--cfg-scale"),
    (("--cfg-scale", "inf"), "--cfg-scale"), (("--seed", "-1"), "--seed"),
    (("--legacy-cfg-channels", "0"), "--legacy-cfg-channels"), (("--num-classes", "0"), "--num-classes"),
    (("--num-classes", "11"), "--num-classes"),
    (("--metrics-out", "{out}/m.json"), "--metrics-out needs --reference"),
    (("--metrics-out", "{out}/m.json", "--reference", "{out}/none.npz"), "none.npz"),
    (("--metrics-out", "{out}/m.json", "--reference", "{ref}", "--extractor", "digits"), "--extractor-weights"),
    (("--metrics-out", "{out}/m.json", "--reference", "{ref}", "--extractor-weights", "{out}/none.pt"),
     "none.pt"),
]


@pytest.mark.parametrize("flags, needle", BAD_FLAGS, ids=[" ".join(f) for f, _ in BAD_FLAGS])
def test_bad_sampling_flags_are_refused_before_work(ckpt, tmp_path, flags, needle):
    out, ref = tmp_path / "out", tmp_path / "ref.npz"
    ref.write_bytes(b"x")
    argv = _sample_argv(ckpt, out) + [f.format(out=out, ref=ref) for f in flags]
    with pytest.raises(InputError) as info:
        main(argv)
    assert needle.format(out=out) in _one_line(info.value)
    assert not out.exists() or not _written(out)


def test_a_missing_checkpoint_flag(tmp_path):
    with pytest.raises(InputError, match="none.pt: checkpoint not found"):
        main(_sample_argv(tmp_path / "none.pt", tmp_path / "out"))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kwargs, needle", [
    ({"per_class": 0}, "--per-class"), ({"classes": []}, "--classes"), ({"classes": [-1]}, "--classes"),
    ({"classes": [10]}, "--classes"), ({"steps": 0}, "--steps"), ({"cfg_scale": NAN}, "--cfg-scale"),
    ({"upscale": 0}, "--upscale"), ({"padding": -1}, "--padding"), ({"micro_batch": 0}, "--micro-batch"),
])
def test_bad_grid_settings_are_refused(ckpt, tmp_path, kwargs, needle):
    settings = dict(classes=[1, 2], per_class=2, sampler="euler", steps=2, autoencoder=IDENTITY, micro_batch=4)
    with pytest.raises(InputError, match=needle):
        sample_grid(ckpt, tmp_path / "out" / "grid.png", **{**settings, **kwargs})
    assert not _written(tmp_path / "out")


# ---------------------------------------------------------------------------------------------
# One writer per output
# ---------------------------------------------------------------------------------------------


def test_a_held_lock_refuses_a_second_sampling_run_at_once(ckpt, tmp_path, capsys, monkeypatch):
    out = tmp_path / "s.npz"
    shards = out.with_suffix(".shards")
    shards.mkdir()
    (shards / "shard-00000.npz").write_bytes(b"the first run's shard")
    monkeypatch.setattr(sample_module, "build_session", lambda *a, **k: pytest.fail("work started"))
    with output_lock(out):
        with pytest.raises(InputError) as info:
            sample_to_npz(ckpt, out, **QUICK)
        assert _one_line(info.value).startswith(f"{out}: another run is writing it (pid {os.getpid()}")
        code = run_cli(main, ["--ckpt", str(ckpt), "--num-samples", "4", "--out", str(out), "--autoencoder",
                              "identity", "--sampler", "euler", "--steps", "2", "--no-progress"])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and "another run is writing it" in err
    with output_lock(shards):  # the shard folder is guarded too (another --out, the same --shard-dir)
        with pytest.raises(InputError, match="another run is writing it"):
            sample_to_npz(ckpt, tmp_path / "other.npz", shard_dir=shards, **QUICK)
    assert (shards / "shard-00000.npz").read_bytes() == b"the first run's shard" and not out.exists()
    monkeypatch.undo()
    sample_to_npz(ckpt, out, **QUICK)  # released: the next run takes the lock (and redoes the broken shard)
    assert _npz(out)[0].shape == (4, 8, 8, 1)


def test_a_held_lock_refuses_a_second_grid(ckpt, tmp_path):
    out = tmp_path / "grid.png"
    with output_lock(out), pytest.raises(InputError, match="another run is writing it"):
        sample_grid(ckpt, out, classes=[1], per_class=2, sampler="euler", steps=2, autoencoder=IDENTITY,
                    micro_batch=4)
    assert not out.exists()
    sample_grid(ckpt, out, classes=[1], per_class=2, sampler="euler", steps=2, autoencoder=IDENTITY, micro_batch=4)
    assert out.is_file()
