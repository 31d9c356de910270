# Shared by every rule file: the registry expanded for this scale, the path table and the input functions
# (the rule files hold rules only). Included first by the Snakefile.
#
# Lint notes (`snakemake --lint`), justified:
# - "Mixed rules and functions" in data.smk: tests/test_data_rules.py includes data.smk on its own, so it
#   carries its own input functions; every other rule file holds rules only. Here: the linter counts the
#   `wildcard_constraints` below as a rule; this file holds functions only.
# - "PATH used but not asserted with envvars": PATH is not an input of the workflow; it is only extended
#   with the harness environment's bin folder, which every shell then finds first.
# - "Specify a conda environment or container for each rule": every job runs in the one harness
#   environment that runs Snakemake (`make env`; environment.yml for conda users); per-rule environments
#   would only split one set of pinned packages.
import json
import os
import re
import sys
from pathlib import Path

from pipeline.config import ConfigError, config_error_exit
from pipeline.paths import ScalePaths
from pipeline.registry import load_registry
from pipeline.runtime import attempt_runtime

# The Snakefile's pipeline.config.load_scale checked the config, load_registry checks config/experiments.yaml
# (and that the config's protocols can hold every cell); a problem ends the run with one line.
try:
    REG, GRID = load_registry(config)
except (ConfigError, ValueError) as _err:
    config_error_exit(_err)
# Jobs run `python` of the environment that runs Snakemake (the harness environment), also inside SLURM
# jobs (they re-read this file); no interpreter path ever appears in a shell command.
if not os.environ.get("PATH", "").startswith(str(Path(sys.executable).parent) + os.pathsep):
    os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
# Every file of this run lives in the scale's folders (work/<scale>/, results/<scale>/, paper_figures/<scale>/):
# PATHS["kind"] is a template, path("kind", ...) a file, in_scale("results/x") any other file of the scale.
PATHS = ScalePaths(config["scale"])
path = PATHS
in_scale = PATHS.at


wildcard_constraints:
    run=r"[A-Za-z0-9._+-]+",
    step=r"\d+",
    tag=r"[a-z0-9]+-cfg[0-9.]+(?:allch|ch\d+)?-n\d+-seed\d+",
    experiment=r"[a-z0-9_]+",
    cell=r"[A-Za-z0-9._+-]+",


def protocol_of(run_id):
    return REG.protocols[REG.run_protocol[run_id]]


def stage_nodes(stage):
    """Nodes per job of a stage at this scale. Multi-node is all or nothing per stage (a rule's resources have
    the same keys for every job), so the protocols must agree; otherwise one line and the run ends."""
    found = {int(p["resources"].get(stage, {}).get("nodes", 1)) for p in REG.protocols.values()}
    if len(found) > 1 and max(found) > 1:
        config_error_exit(ConfigError(f"resources.{stage}.nodes: the protocols of scale {SCALE} ask for "
                                      f"{sorted(found)} nodes; a stage runs on one node or on the same number of "
                                      f"nodes in every protocol"))
    return max(found or {1})


def stage_resources(stage, run_id=None):
    """The resources of a stage for the run in the wildcards (or the fixed ``run_id``), with defaults.

    A multi-node stage (``nodes`` > 1) goes through the SLURM executor's MPI path: the job step runs the rule's
    shell on the first node, whose ``srun`` starts one torchrun agent per node (:func:`launcher`); sbatch asks
    for ``--nodes N --ntasks N`` (one task per node) and ``--gres gpu:G`` per node (G = ``gpu``, per node)."""
    defaults = {"gpu": 0, "nodes": 1, "cpus_per_task": 1, "mem_mb": 2000, "runtime": "30m"}
    # runtime: minutes, `attempt` × the configured time up to `max_runtime` (pipeline.runtime): a retry asks
    # for more.

    def one(key):
        def get(wildcards, attempt=1):
            res = protocol_of(run_id or wildcards.run)["resources"][stage]
            value = res.get(key, defaults[key])
            return attempt_runtime(value, attempt, res.get("max_runtime")) if key == "runtime" else value
        return get

    resources = {key: one(key) for key in defaults}
    if stage_nodes(stage) > 1:
        per_node = resources.pop("gpu")
        resources.update(gpu=0, gres=lambda wildcards, attempt=1: f"gpu:{per_node(wildcards)}", mpi="srun",
                         tasks=resources["nodes"], tasks_per_gpu=0)
    return resources


def single_process_resources(stage, run_id):
    """A stage's resources for a job that runs one process (the sample grid): at most one GPU, and the CPUs
    and memory of one of the stage's GPUs."""
    res = protocol_of(run_id)["resources"][stage]
    share = max(int(res.get("gpu", 0)), 1)
    return {"gpu": min(int(res.get("gpu", 0)), 1), "nodes": 1,
            "cpus_per_task": max(int(res.get("cpus_per_task", 1)) // share, 1),
            "mem_mb": max(int(res.get("mem_mb", 2000)) // share, 1000),
            "runtime": lambda wildcards, attempt=1: attempt_runtime(res.get("runtime", "30m"), attempt,
                                                                    res.get("max_runtime"))}


def launcher(stage, module):
    """`python -m MODULE` for one process; torchrun over the job's GPUs for several (`--` ends torchrun's flags);
    on several nodes `srun` with one pipeline.launch agent per node, joined by a c10d rendezvous on the first.

    A list of arguments: the rules quote each one (`{params.launcher:q}`)."""
    def get(wildcards):
        res = protocol_of(wildcards.run)["resources"][stage]
        gpus, nodes = int(res.get("gpu", 0)), int(res.get("nodes", 1))
        if nodes > 1:
            return ["srun", f"--nodes={nodes}", f"--ntasks={nodes}", "--ntasks-per-node=1",
                    f"--cpus-per-task={int(res.get('cpus_per_task', 1))}", "--kill-on-bad-exit=1",
                    "python", "-m", "pipeline.launch", "--nnodes", str(nodes), "--nproc-per-node", str(max(gpus, 1)),
                    "-m", module, "--"]
        if gpus > 1:
            return ["python", "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(gpus),
                    "-m", module, "--"]
        return ["python", "-m", module]
    return get


def latents_index(wildcards):
    return f"{REG.runs[wildcards.run]['latents']}/index.json"


# Training -------------------------------------------------------------------------------------------------


def previous_checkpoint(wildcards):
    prev = REG.previous_milestone(wildcards.run, int(wildcards.step))
    return [] if prev is None else [path("checkpoint", run=wildcards.run, step=prev)]


# Calibration (published checkpoints) ----------------------------------------------------------------------


def imported_runs(stand_in):
    """A wildcard constraint matching exactly the imported runs whose file is a stand-in (or a published file)."""
    runs = sorted(run for run in REG.imported if REG.is_trained(run) == stand_in)
    return "|".join(re.escape(run) for run in runs) or "(?!)"


def stand_in_checkpoint(wildcards):
    """The trained milestone a stand-in exports: the step its calibration cells evaluate (its last)."""
    return path("checkpoint", run=wildcards.run, step=REG.milestones[wildcards.run][-1])


# Sampling and cells ---------------------------------------------------------------------------------------


def _sample_sets():
    """(run, step, tag) -> the sampler settings of that sample set, from the registry's cells."""
    sets = {}
    for cell in REG.all_cells():
        sets[(cell.run_id, str(cell.step), cell.sample_tag)] = cell
    return sets


SAMPLE_SETS = _sample_sets()


def sample_set(wildcards):
    key = (wildcards.run, wildcards.step, wildcards.tag)
    if key not in SAMPLE_SETS:
        raise ValueError(f"no cell of the registry samples {wildcards.run} step {wildcards.step} as {wildcards.tag}")
    return SAMPLE_SETS[key]


def sampler_flags(sampler):
    """Command-line flags of pipeline.sample / sample_grid for a protocol's sampler block."""
    flags = ["--sampler", sampler["kind"]]
    if "steps" in sampler and sampler["kind"] != "dopri5":
        flags += ["--steps", str(sampler["steps"])]
    if "atol" in sampler:
        flags += ["--atol", str(sampler["atol"]), "--rtol", str(sampler["rtol"])]
    if "variance" in sampler and sampler["kind"] == "ddpm":
        flags += ["--ddpm-variance", sampler["variance"]]
    return flags


def guidance_flags(cfg, cfg_channels):
    """``--cfg-scale`` and, for guided sets on some channels only, ``--legacy-cfg-channels``."""
    flags = ["--cfg-scale", f"{cfg:g}"]
    return flags + (["--legacy-cfg-channels", str(cfg_channels)] if cfg_channels is not None else [])


def sample_checkpoint(wildcards):
    """The checkpoint a sample set reads: the run's milestone, or an imported published file."""
    return REG.checkpoint_path(wildcards.run, int(wildcards.step))


def sample_latents(wildcards):
    """The latents' index.json (it names the decoder) of a trained run; none for an imported one."""
    return [] if wildcards.run in REG.imported else [latents_index(wildcards)]


def sample_decoder(wildcards, input):
    """How pipeline.sample finds the decoder: the latents' index of a trained run, or for an imported published
    checkpoint the protocol's autoencoder spec itself (no latents of the data set needed)."""
    if wildcards.run not in REG.imported:
        return ["--latents-index", input.latents[0]]
    from pipeline.data_config import autoencoder_spec

    spec = autoencoder_spec(config, protocol_of(wildcards.run)["autoencoder"])
    return ["--autoencoder", json.dumps(spec, sort_keys=True)]


def sample_flags(wildcards):
    cell = sample_set(wildcards)
    return sampler_flags(cell.sampler) + guidance_flags(cell.cfg, cell.cfg_channels) + [
        "--num-samples", str(cell.num_samples), "--seed", str(cell.seed)]


def metrics_reference(wildcards):
    from pipeline.registry import reference_path

    return reference_path(protocol_of(wildcards.run), SCALE)


def cell_specs(wildcards):
    cells = REG.cell_groups(wildcards.experiment).get(wildcards.cell)
    if not cells:
        raise ValueError(f"no cell {wildcards.cell!r} in {wildcards.experiment}")
    return cells


# Compute budget -------------------------------------------------------------------------------------------


def budget_options():
    """pipeline.budget flags for the budget_* keys set in the config."""
    options = []
    for flag, key in (("--gpu", "budget_gpu"), ("--cpu", "budget_cpu"), ("--throughput", "budget_throughput")):
        if config.get(key):
            options += [flag, str(config[key])]
    return options


# Figures and tables ---------------------------------------------------------------------------------------


def cells_of(experiment):
    return sorted({c.target for c in REG.cells[experiment]})


FIGURES = ("fig1", "fig2", "fig4", "fig5", "fig6", "fig7")
TABLES = ("table1", "table2", "table3", "calibration")
# Experiments that run an alternative reading of an `assumed:` choice: targets of their own (CSV), never part
# of `all` or the audit.
ALTERNATIVES = tuple(name for name, spec in REG.experiments.items() if spec.get("alternative"))


CAPTION = "../report/experiment.rst"   # the registry's title of the experiment (params.title), per item


def report_outputs(name):
    outputs = {"csv": report(path("table", experiment=name), category=name, caption=CAPTION)}
    if "layout" in REG.experiments[name]:
        outputs["md"] = path("paper_table", experiment=name, ext="md")
        outputs["tex"] = path("paper_table", experiment=name, ext="tex")
        outputs["html"] = report(path("paper_table", experiment=name, ext="html"), category=name, caption=CAPTION)
    if name in FIGURES:
        outputs["pdf"] = report(path("figure", experiment=name, ext="pdf"), category=name, caption=CAPTION)
        outputs["png"] = report(path("figure", experiment=name, ext="png"), category=name, caption=CAPTION)
    return outputs


def paper_table_flags(name):
    """pipeline.report's --markdown/--latex for an experiment with a `layout` (none otherwise)."""
    if "layout" not in REG.experiments[name]:
        return []
    return ["--markdown", path("paper_table", experiment=name, ext="md"),
            "--latex", path("paper_table", experiment=name, ext="tex"),
            "--html", path("paper_table", experiment=name, ext="html")]


def fig3_best_std_results(wildcards):
    """Fig. 2 results are an optional input: used (and then tracked) only once they exist, so Fig. 3 never
    waits for training. When results/<scale>/fig2.csv appears later, Fig. 3 reruns (its input is newer). A path
    under results/ in config/figures/fig3.yaml is this scale's (results/fig2.csv: results/<scale>/fig2.csv)."""
    results = config["fig3"]["best_std"]["results"]
    if str(results).startswith("results/"):
        results = in_scale(results)
    return [results] if Path(results).exists() else []
