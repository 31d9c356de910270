"""The experiment registry expands into shared runs, chained milestones and readable cells."""

from __future__ import annotations

import pytest

from pipeline import config as config_files
from pipeline.config import ConfigError, load_claims, load_fig3, load_scale, read_yaml
from pipeline.registry import expand, load_experiments, load_registry, parse_sample_tag, run_slug, sample_tag


def scale(name: str) -> dict:
    return load_scale(name)


@pytest.fixture(scope="module", params=["smoke", "mini", "paper"])
def registry(request):
    return expand(load_experiments(), scale(request.param))


def test_std_grids_contain_the_values_the_paper_names():
    """The paper scale sweeps the four values the paper names; mini keeps the ends and 0.9 (2.5 trimmed, README)."""
    assert {0.3, 0.9, 2.5, 3.3} <= set(scale("paper")["std_grid"])
    assert {0.3, 0.9, 3.3} <= set(scale("mini")["std_grid"])
    for name in ("smoke", "mini", "paper"):
        crossover = scale(name)["std_grid_crossover"]
        assert min(crossover) == 0.3 and max(crossover) == 3.3   # the crossover claim reads the two ends


def test_a_sweep_names_only_lists_the_scale_defines():
    """A sweep string that is not a scale list is refused, never swept letter by letter."""
    from pipeline.registry import _sweep_points

    assert len(_sweep_points({"std": "std_grid_crossover"}, scale("mini"))) == 2
    with pytest.raises(ValueError, match="sweep.schedule: 'fig5_schedules' is neither"):
        _sweep_points({"schedule": "fig5_schedules"}, scale("mini"))


def test_mini_gives_every_cell_a_claim_reads_three_seeds():
    """Issue 16 item 5: at mini every protocol a claim reads trains three seeds."""
    config = scale("mini")
    registry = expand(load_experiments(), config)
    for cell in registry.all_cells():
        if cell.protocol != "calibration_256":     # the stand-ins: judged at the paper scale only
            assert len(config["protocols"][cell.protocol]["seeds"]) >= 3, cell.protocol


def test_every_cell_has_a_run_and_a_milestone(registry):
    for cell in registry.all_cells():
        assert cell.run_id in registry.runs
        assert cell.step in registry.milestones[cell.run_id]
        assert cell.step <= registry.protocols[cell.protocol]["steps"]


def test_shared_runs_are_trained_once(registry):
    by_exp = {exp: {c.run_id for c in cells} for exp, cells in registry.cells.items()}
    # Fig. 5's epsilon-prediction flows are Fig. 2's flow runs; Fig. 4's uniform curves are Fig. 2's DDPM runs.
    fig2_flow = {c.run_id for c in registry.cells["fig2"] if c.coords["schedule"].startswith("flow")}
    fig5_noise = {c.run_id for c in registry.cells["fig5"] if c.coords.get("prediction") == "noise"}
    assert fig2_flow == fig5_noise
    fig4_uniform = {c.run_id for c in registry.cells["fig4"] if c.coords["timesteps"] == "uniform"}
    assert fig4_uniform <= by_exp["fig2"]
    # Fig. 7's and Fig. 1's FasterDiT cells and Table 1 share one FasterDiT run per seed.
    fasterdit = {c.run_id for exp in ("fig1", "fig7", "table1") for c in registry.cells[exp]
                 if c.id.startswith(("fasterdit", "both"))}
    assert len(fasterdit) == len(registry.protocols["section4"]["seeds"])


def test_milestones_chain(registry):
    for run_id, steps in registry.milestones.items():
        assert steps == sorted(set(steps))
        assert registry.previous_milestone(run_id, steps[0]) is None
        for prev, nxt in zip(steps, steps[1:]):
            assert registry.previous_milestone(run_id, nxt) == prev


def test_run_ids_are_readable_and_stable(registry):
    again = expand(load_experiments(), scale(registry.scale))
    assert set(again.runs) == set(registry.runs)
    for run_id, run in registry.runs.items():
        assert run_id.startswith(run_slug(registry.run_protocol[run_id], run))


def test_recipes_follow_the_paper(registry):
    cells = {c.id: c for c in registry.cells["table1"]}
    run = registry.runs[cells["fasterdit-1000k-cfg1.5"].run_id]
    assert run["schedule"] == "flow-linear" and run["prediction"] == "velocity"
    assert run["input_scale"] == {"target_std": 0.82}
    assert run["timesteps"] == {"kind": "lognorm", "mu": 0.0, "sigma": 1.0}
    assert run["direction_loss"] is True
    assert cells["fasterdit-1000k-cfg1.5"].cfg == 1.5
    dit = registry.runs[{c.id: c for c in registry.cells["fig1"]}["dit-400k"].run_id]
    assert dit["schedule"] == "ddpm-linear" and dit["network"]["learn_sigma"] is True
    fig2 = registry.cells["fig2"]
    assert {c.coords["schedule"] for c in fig2} == {"ddpm-linear", "ddpm-cosine", "flow-linear", "flow-cosine"}
    assert all(registry.runs[c.run_id]["prediction"] == "noise" for c in fig2)
    assert all(c.sampler["kind"] == "ddpm" for c in fig2 if c.coords["schedule"].startswith("ddpm"))


def test_guided_cells_guide_three_channels_unless_told_otherwise():
    reg, grid = load_registry(load_scale("paper"))
    table1 = {c.id: c for c in reg.cells["table1"]}
    assert table1["fasterdit-1000k-cfg1.5"].cfg_channels == 3 and table1["fasterdit-1000k-cfg1"].cfg_channels is None
    assert table1["fasterdit-1000k-cfg1.5"].sample_tag == "dopri5-cfg1.5-n50000-seed0"
    assert grid["cfg_channels"] == 3
    flow = {"kind": "dopri5"}
    assert sample_tag(flow, 1.5, 10, 0, None) == "dopri5-cfg1.5allch-n10-seed0"   # the named alternative
    assert sample_tag(flow, 1.0, 10, 0, None) == sample_tag(flow, 1.0, 10, 0, 3) == "dopri5-cfg1-n10-seed0"
    for channels in (3, None, 2):
        assert parse_sample_tag(sample_tag(flow, 1.5, 10, 0, channels))["cfg_channels"] == channels
    experiments = load_experiments()
    cell = next(c for c in experiments["experiments"]["table1"]["blocks"][0]["cells"] if c["cfg"] == 1.5)
    cell["cfg_channels"] = "all"
    alternative = {c.id: c for c in expand(experiments, load_scale("paper")).cells["table1"]}
    assert alternative[cell["id"]].cfg_channels is None and "allch" in alternative[cell["id"]].sample_tag


def test_fig1_reads_lognorm_literally_and_sd3s_reading_is_an_alternative():
    reg = expand(load_experiments(), load_scale("mini"))

    def timesteps(experiment: str) -> dict[str, dict]:
        return {c.coords["timesteps"]: reg.runs[c.run_id]["timesteps"] for c in reg.cells[experiment]
                if c.block == "left"}

    literal, sd3 = timesteps("fig1"), timesteps("fig1_sd3")
    assert literal["lognorm(-0.5, 1)"] == {"kind": "lognorm", "mu": -0.5, "sigma": 1.0}
    assert literal["lognorm(0.5, 0.6)"] == {"kind": "lognorm", "mu": 0.5, "sigma": 0.6}
    assert sd3["lognorm(-0.5, 1)"]["mu"] == 0.5 and sd3["lognorm(0.5, 0.6)"]["mu"] == -0.5
    experiments = load_experiments()["experiments"]
    assert experiments["fig1_sd3"].get("alternative") and not experiments["fig1"].get("alternative")


def test_table1_cites_every_row_of_the_paper_in_its_order():
    """Table 1 prints 19 rows: FasterDiT's 4 (run) and 15 quoted from other papers (cited)."""
    cited = load_experiments()["experiments"]["table1"]["cited"]
    methods = [row["method"].split(" [")[0] for row in cited]
    assert methods == ["BigGAN-deep", "MaskGIT", "ADM-G", "CDM", "RIN", "Simple Diffusion (U-Net)",
                       "Simple Diffusion (U-ViT-L)", "LDM-4-G", "U-ViT-G", "StyleGAN-XL", "MDT-G", "DiT", "SiT",
                       "DiT (cfg=1.5)", "SiT (cfg=1.5)"]
    assert [row["fid"] for row in cited[1:7]] == [6.18, 4.59, 4.88, 3.42, 3.76, 2.77]


def test_paper_scale_matches_tables_4_to_7():
    reg = expand(load_experiments(), scale("paper"))
    s3, s4 = reg.protocols["section3"], reg.protocols["section4"]
    assert (s3["resolution"], s3["steps"], s3["num_samples"], s3["cfg"], s3["flip"]) == (128, 100000, 10000, 1.0, False)
    assert (s4["resolution"], s4["num_samples"], s4["flip"]) == (256, 50000, True)
    assert s3["global_batch"] == s4["global_batch"] == 256
    assert s3["optimizer"] == {"lr": 1e-4, "weight_decay": 0.0, "betas": [0.9, 0.999], "grad_clip": None}
    assert s3["samplers"]["ddpm"] == {"kind": "ddpm", "steps": 250, "variance": "fixed-large"}  # DiT create_diffusion
    assert s3["samplers"]["flow"]["kind"] == "dopri5"
    fasterdit = [c for c in reg.cells["table1"]][0].run_id
    assert reg.milestones[fasterdit][-1] == 2000000
    assert all(b - a <= 50000 for a, b in zip(reg.milestones[fasterdit], reg.milestones[fasterdit][1:]))


def test_sample_tag():
    assert sample_tag({"kind": "dopri5"}, 1.5, 50000, 0) == "dopri5-cfg1.5-n50000-seed0"
    assert sample_tag({"kind": "ddpm", "steps": 250}, 1.0, 10000, 0) == "ddpm250-cfg1-n10000-seed0"


@pytest.mark.parametrize("sampler", [{"kind": "dopri5"}, {"kind": "ddpm", "steps": 250}, {"kind": "heun", "steps": 4},
                                     {"kind": "euler", "steps": 100}])
def test_sample_tag_round_trip(sampler):
    parsed = parse_sample_tag(sample_tag(sampler, 1.5, 1000, 2))
    assert parsed["kind"] == sampler["kind"] and parsed["steps"] == sampler.get("steps", 0)
    assert (parsed["cfg"], parsed["n"], parsed["seed"]) == (1.5, 1000, 2)


# ---------------------------------------------------------------- config files (pipeline.config)


@pytest.mark.parametrize("name", ["mini", "smoke", "paper"])
def test_scale_loads_complete_and_reloads_unchanged(name):
    cfg = load_scale(name)
    assert cfg["scale"] == name and "protocol_defaults" not in cfg
    assert list(cfg["protocols"]) == list(read_yaml(config_files.PROTOCOLS_FILE)["protocols"])
    assert load_scale(name, overrides=cfg) == cfg       # a loaded config passed back (Snakemake jobs) is stable


def test_scale_files_hold_values_only():
    """Roles (data set, autoencoder, reference, network) are declared once, in config/protocols.yaml."""
    for name in config_files.scale_names():
        values = read_yaml(config_files.SCALES_DIR / f"{name}.yaml")
        for layer in [values.get("protocol_defaults") or {}, *(values["protocols"] or {}).values()]:
            assert not {"dataset", "autoencoder", "reference", "network"} & set(layer), name


def test_overrides_merge_mappings_and_replace_everything_else():
    """Issue 19 item 3: `--config std_grid=[1.0]` replaces a list; a nested `--configfile` merges key by key
    (`datasets: {imagenet: {root: X}}` sets one root, `protocols: {section4: {steps: 10}}` one count) instead of
    replacing the whole block; an empty mapping clears a key."""
    assert load_scale("mini", overrides={"std_grid": [1.0]})["std_grid"] == [1.0]
    paper = load_scale("paper", overrides={"datasets": {"imagenet": {"root": "/data/imagenet/train"}}})
    assert paper["datasets"]["imagenet"] == {"kind": "imagefolder", "root": "/data/imagenet/train", "num_classes": 1000}
    mini = load_scale("mini", overrides={"protocols": {"section4": {"steps": 10}}})
    assert mini["protocols"]["section4"]["steps"] == 10 and mini["protocols"]["section4"]["seeds"] == [0, 1, 2]
    assert mini["protocols"]["section3"] == load_scale("mini")["protocols"]["section3"]
    assert load_scale("mini", overrides={"audit_alternatives": []})["audit_alternatives"] == []
    with pytest.raises(ConfigError, match="section9"):
        load_scale("mini", overrides={"protocols": {"section9": {"steps": 1}}})


def test_every_experiment_uses_a_declared_protocol():
    declared = set(read_yaml(config_files.PROTOCOLS_FILE)["protocols"])
    for spec in load_experiments()["experiments"].values():
        assert {block["protocol"] for block in spec["blocks"]} <= declared


def test_config_errors_are_reported():
    with pytest.raises(ConfigError, match="unknown scale"):
        load_scale("huge")
    with pytest.raises(ConfigError, match="does not declare"):
        load_scale("mini", overrides={"protocols": {"section9": {"steps": 1}}})
    with pytest.raises(ConfigError, match="no stand-in for the paper's network 'DiT-XL/2'"):
        load_scale("paper", overrides={"stand_ins": {"networks": {"DiT-B/2": "DiT-T/4"}}})
    with pytest.raises(ConfigError, match="protocols/section3/steps"):
        load_scale("mini", overrides={"protocols": {"section3": {"steps": 0}}})
    with pytest.raises(ConfigError, match="not a key of datasets"):
        load_scale("mini", overrides={"protocols": {"section3": {"dataset": "other"}}})


def test_stand_ins_are_read_off_the_scales():
    assert config_files.STAND_INS == {
        "DiT-XL/2": {"mini": "DiT-T/4", "smoke": "DiT-T/2"},
        "DiT-B/2": {"mini": "DiT-T/4", "smoke": "DiT-T/2"},
        "DiT-L/2": {"mini": "DiT-Mini/4", "smoke": "DiT-Mini/2"},
        "U-ViT-L/2": {"mini": "U-ViT-T/2", "smoke": "U-ViT-T/2"},
        "LDM-UNet": {"mini": "LDM-UNet-T", "smoke": "LDM-UNet-T"},
    }


def test_claims_and_fig3_match_their_schemas():
    claims = load_claims()
    assert len({c["id"] for c in claims}) == len(claims)
    assert {"schedules", "band_db", "views"} <= set(load_fig3())
