"""pipeline.paths: every output of a scale lies in that scale's folders (issue 19, scales never clobber)."""

from __future__ import annotations

import pytest

from pipeline.config import load_scale, scale_names
from pipeline.paths import TEMPLATES, ScalePaths, at_scale, scale_of_path
from pipeline.registry import load_registry


def test_a_path_moves_into_its_scale_folder():
    assert at_scale("work/runs/x/run.json", "mini") == "work/mini/runs/x/run.json"
    assert at_scale("results/", "paper") == "results/paper/"
    assert ScalePaths("smoke")("checkpoint", run="r", step=4) == "work/smoke/runs/r/ckpt/step4.pt"
    assert ScalePaths("smoke")["cell"] == "results/smoke/cells/{experiment}/{cell}.json"
    for bad_scale in ("../x", "", "Mini", "a/b"):
        with pytest.raises(ValueError, match="not a folder name"):
            at_scale("work/x", bad_scale)
    with pytest.raises(ValueError, match="is not under"):
        at_scale("logs/x", "mini")


def test_the_scale_of_a_target_is_its_folder():
    scales = scale_names()
    assert scale_of_path("results/paper/table1.csv", scales) == "paper"
    assert scale_of_path("./paper_figures/mini/fig2.png", scales) == "mini"
    assert scale_of_path("results/table1.csv", scales) is None
    assert scale_of_path("results/cells/table1/x.json", scales) is None      # `cells` is no scale
    assert scale_of_path("eval/weights/x.pt", scales) is None


@pytest.mark.parametrize("scale", ["smoke", "mini", "paper"])
def test_every_file_of_a_registry_lies_in_its_scale_folders(scale):
    registry, grid = load_registry(load_scale(scale))
    files = [c.target for c in registry.all_cells()] + [c.metrics_path for c in registry.all_cells()]
    files += [c.samples_path for c in registry.all_cells()]
    files += [registry.checkpoint_path(run, steps[-1]) for run, steps in registry.milestones.items()]
    files += [run["latents"] for run in registry.runs.values() if "latents" in run]
    assert all(scale_of_path(f, scale_names()) == scale for f in files), [f for f in files if scale not in f][:3]
    assert set(TEMPLATES) == set(ScalePaths(scale).templates)
