"""Hostile input to the workflow: every value reaching a shell is quoted, the config schema refuses what it
does not know, a path with a space works.

- every `shell:` string of workflow/rules/*.smk quotes each placeholder with `:q` (read off the files);
- a config value full of shell metacharacters (the Inception weights path) runs nothing;
- a bad or misspelt config key ends Snakemake with one line naming the key, before anything runs;
- the budget and the audit rules run in a checkout whose path holds a space.
"""

from __future__ import annotations

import ast
import csv
import io
import os
import re
import shutil
import string
import subprocess
import sys
import tokenize
from pathlib import Path

import pytest
import yaml

from pipeline.config import ConfigError, load_scale

ROOT = Path(__file__).resolve().parents[1]
RULE_FILES = sorted((ROOT / "workflow" / "rules").glob("*.smk"))
UNQUOTED_OK = {"threads"}           # an int Snakemake computes
HOSTILE = ["x'; touch PWNED; echo '", "$(touch PWNED)", "`touch PWNED`", "--version"]


# Lint: placeholders of shell strings ----------------------------------------------------------------------


def shell_strings(path: Path) -> list[tuple[int, str]]:
    """(line, string) of every `shell:` directive of a Snakemake file, its implicitly joined literals joined.

    A shell command that is not a plain string literal (an f-string, `.format`, a concatenation with a
    variable) raises: its placeholders could not be checked.
    """
    tokens = list(tokenize.generate_tokens(io.StringIO(path.read_text()).readline))
    skip = {tokenize.NL, tokenize.NEWLINE, tokenize.COMMENT, tokenize.INDENT, tokenize.DEDENT}
    found = []
    for i, tok in enumerate(tokens):
        if not (tok.type == tokenize.NAME and tok.string == "shell" and tokens[i + 1].string == ":"
                and tok.line[:tok.start[1]].strip() == ""):
            continue
        parts, j = [], i + 2
        while tokens[j].type in skip | {tokenize.STRING}:
            if tokens[j].type == tokenize.STRING:
                parts.append(ast.literal_eval(tokens[j].string))      # ValueError for an f-string
            j += 1
        if not parts or tokens[j].type == tokenize.OP:
            raise AssertionError(f"{path.name}:{tok.start[0]}: shell command is not a plain string literal")
        found.append((tok.start[0], "".join(parts)))
    return found


def unquoted_placeholders(command: str) -> list[str]:
    """Placeholders of a Snakemake shell string without `:q` (`{{ }}` are literal braces, not placeholders)."""
    bad = []
    for _literal, field, spec, conversion in string.Formatter().parse(command):
        if field is None:
            continue
        if field in UNQUOTED_OK and not spec and not conversion:
            continue
        if not (spec or "").endswith("q"):
            bad.append("{" + field + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}")
    return bad


def test_the_shell_lint_catches_what_it_should():
    assert unquoted_placeholders("cmd {input:q} {threads} ${{HOME:-}} {{ echo; }}") == []
    assert unquoted_placeholders("cmd {params.x} {wildcards.step:d} {threads:q} {output!r}") == [
        "{params.x}", "{wildcards.step:d}", "{output!r}"]


def test_every_shell_placeholder_is_quoted():
    assert RULE_FILES, "no workflow/rules/*.smk"
    total, problems = 0, []
    for path in RULE_FILES:
        commands = shell_strings(path)
        declared = len(re.findall(r"^\s*shell\s*:", path.read_text(), flags=re.M))
        assert len(commands) == declared, f"{path.name}: read {len(commands)} of {declared} shell directives"
        total += len(commands)
        for line, command in commands:
            problems += [f"{path.name}:{line}: {p}" for p in unquoted_placeholders(command)]
    assert total >= 10, total
    assert not problems, "unquoted shell placeholders (add :q):\n" + "\n".join(problems)


def test_the_sbatch_time_budget_trick_survives_quoting():
    (_, command), = shell_strings(ROOT / "workflow" / "rules" / "train.smk")
    assert '$([ -n "${{SLURM_JOB_ID:-}}" ] && echo --time-budget-minutes {resources.runtime:q})' in command


# Running Snakemake ----------------------------------------------------------------------------------------


def snakemake(workdir: Path, *args: str, snakefile: Path = ROOT / "Snakefile", env: dict | None = None,
              timeout: int = 600) -> subprocess.CompletedProcess:
    """As tests/test_workflow.py: this environment's Snakemake, no profile, outputs under ``workdir``."""
    run_env = {k: v for k, v in os.environ.items() if k != "SNAKEMAKE_PROFILE"}
    run_env["OMP_NUM_THREADS"] = "1"
    run_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(snakefile), "--workflow-profile",
                           "none", "--directory", str(workdir), *args], capture_output=True, text=True,
                          env=run_env, timeout=timeout, cwd=workdir)


def pwned(*roots: Path) -> list[Path]:
    return [p for root in roots for p in root.rglob("PWNED")] + [p for p in (ROOT / "PWNED",) if p.exists()]


def created_files(workdir: Path) -> list[Path]:
    """Files Snakemake left in ``workdir`` other than its own run log."""
    return [p for p in workdir.rglob("*") if p.is_file() and ".snakemake" not in p.relative_to(workdir).parts]


def inception_link(tmp_path: Path, weights: str, dry: bool = False) -> tuple[subprocess.CompletedProcess, Path]:
    """Snakemake asked for the Inception link with ``extractor.weights`` set to ``weights``. A real run first
    checks the file (its SHA-256 against torch-fidelity's); with ``dry`` the rule's own shell command, as
    Snakemake prints it (`-n -p`), is run by bash as Snakemake runs it, so the quoting is tested on any file."""
    workdir = tmp_path / "work dir"
    workdir.mkdir(exist_ok=True)
    configfile = tmp_path / "hostile.yaml"
    configfile.write_text(yaml.safe_dump({"extractor": {"kind": "inception", "weights": weights}}))
    load_scale("mini", overrides=yaml.safe_load(configfile.read_text()))        # the schema lets it through
    args = ("work/mini/extractors/inception.pth", "--configfile", str(configfile))
    if not dry:
        return snakemake(workdir, "--cores", "1", *args), workdir
    printed = snakemake(workdir, "-n", "-p", "--cores", "1", *args)
    assert printed.returncode == 0, printed.stderr[-3000:]
    command = next(line for line in printed.stdout.splitlines() if line.startswith("Shell command: "))
    for folder in ("work/mini/extractors", "work/mini/logs/extractors"):
        (workdir / folder).mkdir(parents=True, exist_ok=True)
    shell = ["bash", "-c", "set -euo pipefail; " + command.removeprefix("Shell command: ")]
    return subprocess.run(shell, capture_output=True, text=True, cwd=workdir, timeout=60), workdir


@pytest.mark.parametrize("name", HOSTILE)
def test_a_hostile_weights_path_is_linked_never_run(tmp_path, name):
    weights_dir = tmp_path / "weights"
    weights_dir.mkdir()
    (weights_dir / name).write_bytes(b"not really inception")
    proc, workdir = inception_link(tmp_path, str(weights_dir / name), dry=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    link = workdir / "work" / "mini" / "extractors" / "inception.pth"
    assert link.is_symlink() and Path(os.readlink(link)) == (weights_dir / name).resolve()
    assert not pwned(tmp_path)
    link.unlink()
    # A real run refuses these bytes before any job: they are not torch-fidelity's weights (one line, no link).
    proc, workdir = inception_link(tmp_path, str(weights_dir / name))
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert proc.returncode != 0 and len(errors) == 1 and errors[0].startswith("error: extractor.weights: ")
    assert "expected SHA-256 starting 6726825d" in errors[0] and not link.exists() and not pwned(tmp_path)


def test_a_hostile_relative_weights_path_starting_with_dashes_is_a_file_name(tmp_path):
    (tmp_path / "work dir").mkdir()
    (tmp_path / "work dir" / "--version").write_bytes(b"weights")
    proc, workdir = inception_link(tmp_path, "--version", dry=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    link = workdir / "work" / "mini" / "extractors" / "inception.pth"
    assert Path(os.readlink(link)) == (workdir / "--version").resolve()


def test_a_missing_hostile_weights_path_fails_cleanly(tmp_path):
    for dry, message in ((False, "error: extractor.weights: "), (True, "error: Inception weights not found at")):
        proc, workdir = inception_link(tmp_path, str(tmp_path / "x'; touch PWNED; echo '$(touch PWNED)"), dry=dry)
        assert proc.returncode != 0 and message in proc.stderr, proc.stderr[-3000:]
        assert not (workdir / "work" / "mini" / "extractors" / "inception.pth").exists()
        assert not pwned(tmp_path)


# The schema refuses ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("entry", "key"), [
    ("scale_name=x; touch PWNED", "scale_name"),
    ("scael=smoke", "scael"),
    ("scale=../../x", "scale"),
    ("budget_gpu=$(touch PWNED)", "budget_gpu"),
    ("fig3={n_samples: 0}", "fig3/n_samples"),
])
def test_a_bad_config_key_ends_snakemake_with_one_line(tmp_path, entry, key):
    proc = snakemake(tmp_path, "--cores", "1", "--config", entry)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    assert re.search(rf"(^|[ :]){re.escape(key)}: ", errors[0]), errors[0]
    assert "Traceback" not in proc.stderr and 'File "' not in proc.stderr, proc.stderr
    assert not created_files(tmp_path) and not pwned(tmp_path)


def test_unknown_keys_name_the_key_and_the_closest_one():
    with pytest.raises(ConfigError, match=r"scael: unknown key \(did you mean 'scale'\?\)"):
        load_scale("mini", overrides={"scael": "smoke"})
    with pytest.raises(ConfigError, match=r"datasets/digits/roots: unknown key \(did you mean 'root'\?\)"):
        load_scale("mini", overrides={"datasets": {"digits": {"kind": "digits", "num_classes": 10, "roots": "x"}}})
    with pytest.raises(ConfigError) as err:
        load_scale("mini", overrides={"extractor": {"kind": "digits", "weights": "a\nb"}})
    assert "\n" not in str(err.value) and "extractor/weights" in str(err.value)


@pytest.mark.parametrize("overrides", [
    {"protocols": {"section3": {"resources": {"train": {"runtime": "$(touch PWNED)"}}}}},
    {"protocols": {"section3": {"samplers": {"flow": {"kind": "dopri5", "atoll": 1e-3}}}}},
    {"references": {"digits-8": {"num": 0}}},
    {"latents": {"shard_sise": 4}},
    {"std_grid": [0.0]},
    {"datasets": {"a b": {"kind": "digits", "num_classes": 10}}},
    {"budget_throughput": ""},
])
def test_the_schema_refuses(overrides):
    with pytest.raises(ConfigError):
        load_scale("mini", overrides=overrides)


@pytest.mark.parametrize("overrides", [
    # every `--config` key README.md, docs/, Makefile and the tests use, as Snakemake parses it
    {"scale": "paper", "budget_gpu": "H100-SXM5", "budget_cpu": "cpu",
     "budget_throughput": "benchmarks/results/host name.json"},
    {"fig3": {"n_samples": "100", "stds": {"low": "0.3", "high": "3.3"}}},
    {"scale": "paper",
     "datasets": {"imagenet": {"kind": "imagefolder", "root": "/data/imagenet/train", "num_classes": "1000"}}},
    {"extractor": {"kind": "inception", "weights": "/weights/pt_inception-2015-12-05.pth"}},
])
def test_the_command_line_keys_stay_accepted(overrides):
    scale = overrides.get("scale", "mini")
    config = load_scale(scale, overrides=overrides)
    assert load_scale(scale, overrides=config) == config      # what Snakemake hands its jobs loads again


def test_commands_built_by_input_functions_are_argument_lists(tmp_path):
    proc = snakemake(tmp_path, "-n", "-p", "results/paper/table1.csv", "--config", "scale=paper")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "python -m torch.distributed.run --standalone --nproc_per_node 8 -m pipeline.train -- " in proc.stdout
    assert "'python -m" not in proc.stdout


# A checkout whose path holds a space ---------------------------------------------------------------------


def copy_checkout(dest: Path) -> Path:
    """The tracked files of this checkout and its untracked, not ignored ones, as they are in the work tree."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        src, dst = ROOT / rel, dest / rel
        if not (src.exists() or src.is_symlink()) or src.is_dir() and not src.is_symlink():
            continue                                  # deleted in the work tree, or a submodule
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            os.symlink(os.readlink(src), dst)
        else:
            shutil.copy2(src, dst)
    return dest


@pytest.mark.skipif(not (ROOT / ".git").exists(), reason="not a git checkout")
def test_budget_and_audit_run_in_a_path_with_a_space(tmp_path):
    repo = copy_checkout(tmp_path / "a b" / "repo")
    # The audit's inputs: the committed mini tables (results/mini/, the outputs of a mini run).
    (repo / "results" / "mini" / "audit.csv").unlink()
    # Only these two rules: the tables are taken as they are (no rule may rebuild them from cells).
    proc = snakemake(repo, "--cores", "1", "results/mini/budget.csv", "results/mini/audit.csv",
                     "--allowed-rules", "budget", "audit", snakefile=repo / "Snakefile",
                     env={"PYTHONPATH": str(repo)})
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-3000:])
    assert (repo / "results" / "mini" / "budget.csv").read_text().startswith("# provenance: ")

    def verdicts(path: Path) -> list[tuple[str, str]]:
        lines = [line for line in path.read_text().splitlines() if not line.startswith("#")]
        return [(row["claim"], row["reading"], row["verdict"]) for row in csv.DictReader(lines)]

    assert verdicts(repo / "results" / "mini" / "audit.csv") == verdicts(ROOT / "results" / "mini" / "audit.csv")


# A fresh checkout holds the committed mini outputs --------------------------------------------------------


def job_stats(output: str) -> dict[str, str]:
    """Snakemake's 'Job stats' table: rule -> count."""
    table = output[output.index("Job stats:"):].split("\n\n")[0]
    return dict(re.findall(r"^(\w+)\s+(\d+)$", table, flags=re.M))


@pytest.mark.skipif(not (ROOT / ".git").exists(), reason="not a git checkout")
def test_make_run_on_a_fresh_checkout_regenerates_everything(tmp_path):
    """The committed mini outputs have no work files behind them; Snakemake alone would take them as done and
    only re-render. `make run` forces the cells, grids and Fig. 3 until a run has finished in the checkout, and
    then the whole DAG runs (every cell, every training segment); once finished, it forces nothing."""
    fresh = subprocess.run(["make", "-n", "run", f"REGENERATED={tmp_path / 'none'}"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout
    line = next(line for line in fresh.splitlines() if "snakemake --cores" in line)
    assert line.endswith("--forcerun cell grids fig3")
    done = subprocess.run(["make", "-n", "run", "REGENERATED=Makefile"], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout
    assert "--forcerun" not in done
    repo = copy_checkout(tmp_path / "repo")
    assert (repo / "results" / "mini" / "cells").is_dir()          # the committed snapshot is there
    plain = snakemake(repo, "-n", "--cores", "2", "--config", "scale=mini", env={"PYTHONPATH": str(repo)},
                      snakefile=repo / "Snakefile")
    assert plain.returncode == 0, plain.stderr[-2000:]
    assert "train_segment" not in job_stats(plain.stdout) and "cell" not in job_stats(plain.stdout)
    flags = line.split("--rerun-incomplete")[1].split()
    forced = snakemake(repo, "-n", "--cores", "2", "--config", "scale=mini", *flags, env={"PYTHONPATH": str(repo)},
                       snakefile=repo / "Snakefile")
    assert forced.returncode == 0, forced.stderr[-2000:]
    counts = job_stats(forced.stdout)
    cells = len(list((repo / "results" / "mini" / "cells").rglob("*.json")))
    assert int(counts["cell"]) == cells and int(counts["train_segment"]) > 100 and "grids" in counts
