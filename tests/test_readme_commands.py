"""Every command of the README's quick start, "other entry points", SNR and SLURM blocks, and every inline
`.venv/bin/snakemake …` command, run in the form written (issue 19): snakemake commands as a dry run (`-n`) in a
scratch directory, `make` targets with `make -n`, the rest as they are. The README cannot rot."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
# Blocks not run here: the refactor proof (a procedure across two checkouts, not one command) and the import of a
# published checkpoint (needs the 2.7 GB file; tests/test_import_checkpoint.py runs the same CLI on small networks).
# The one-time downloads (`curl`) are never run: nothing here may download (tests/test_data_readiness.py checks
# the table they come from).
SKIPPED_BLOCKS = ("git worktree add", "pipeline.import_checkpoint", "curl -fL")


def bash_blocks() -> list[str]:
    return re.findall(r"```bash\n(.*?)```", README, flags=re.S)


def commands() -> list[str]:
    """One entry per command: fenced ```bash lines (comments cut, `\\` continuations joined) and inline
    `.venv/bin/snakemake …` code spans."""
    found = []
    for block in bash_blocks():
        if any(marker in block for marker in SKIPPED_BLOCKS):
            continue
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].split(" # ")[0].strip()
            if line:
                found.append(line)
    found += re.findall(r"`(\.venv/bin/snakemake [^`]+)`", README)
    return list(dict.fromkeys(found))


def env() -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if k != "SNAKEMAKE_PROFILE"}
    out["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{out.get('PATH', '')}"
    return out


def run(argv: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=cwd, env=env(), capture_output=True, text=True, timeout=timeout)


def snakemake_argv(words: list[str], workdir: Path, dry: bool = True) -> list[str]:
    argv = [sys.executable, "-m", "snakemake", *words[1:], "--snakefile", str(ROOT / "Snakefile"),
            "--directory", str(workdir)]
    if "--profile" not in words:
        argv += ["--workflow-profile", "none"]
    if dry and "-n" not in words and "--unlock" not in words:
        argv.append("-n")
    return argv


def test_the_readme_lists_the_commands_this_test_runs():
    found = commands()
    assert "make run" in found and "make test" in found
    assert any("--profile slurm" in c for c in found) and any("--report" in c for c in found)
    assert len(found) >= 12, found


@pytest.mark.parametrize("command", commands())
def test_each_readme_command_works_as_written(command, tmp_path):
    words = shlex.split(command)
    if words[0] == "make":
        proc = run(["make", "-n", *words[1:]], ROOT)
        assert proc.returncode == 0, proc.stderr
        assert ("snakemake --cores" in proc.stdout) if words[1] == "run" else ("pytest" in proc.stdout)
        return
    if words[0].endswith("snakemake"):
        if "--report" in words:
            pytest.skip("needs a finished run: tests/test_workflow.py runs it on the smoke run")
        proc = run(snakemake_argv(words, tmp_path), ROOT)
        assert proc.returncode == 0, (command, proc.stderr[-2000:])
        assert "cores have to be specified" not in proc.stderr
        return
    argv = [sys.executable if w in (".venv/bin/python", "python") else w for w in words]
    if argv[1:2] == ["tests/slurm/sbatch_preview.py"]:
        argv += ["--directory", str(tmp_path), "--workflow-profile", "none"]
    proc = run(argv, tmp_path if "pipeline.snr_pdf" in command else ROOT)
    assert proc.returncode == 0, (command, proc.stderr[-2000:])


def test_the_slurm_profile_without_slurm_fails_once_up_front(tmp_path):
    if shutil.which("sbatch") is not None:
        pytest.skip("SLURM is installed here: the real-SLURM tests (tests/test_slurm.py) run the profile")
    command = next(c for c in commands() if "--profile slurm" in c and c.startswith(".venv/bin/snakemake"))
    words = [w.replace("scale=paper", "scale=smoke").replace("results/paper/", "results/smoke/")   # no ImageNet here
             for w in shlex.split(command)]
    proc = run(snakemake_argv(words, tmp_path, dry=False), ROOT, timeout=120)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 1 and len(errors) == 1 and "needs SLURM" in errors[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "sbatch" not in proc.stdout
    assert not (tmp_path / "results").exists()
