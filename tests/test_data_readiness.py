"""Paper-scale readiness: the known external files and the checks that say where to get a missing one."""

from __future__ import annotations

import dataclasses
import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline import known_files
from pipeline.data import main as data_main
from pipeline.data_config import DATA_PARTS, check_data_sources
from pipeline.known_files import INCEPTION, KNOWN_FILES, fetch_command, known_file, where_to_get

REPO = Path(__file__).resolve().parents[1]
INCEPTION_URL = KNOWN_FILES[INCEPTION].url


def _inception(weights: object) -> dict:
    return {"extractor": {"kind": "inception", "weights": weights}}


def _fake_weights(tmp_path: Path) -> tuple[Path, str]:
    path = tmp_path / "weights-inception-2015-12-05-6726825d.pth"
    path.write_bytes(b"not the real inception weights")
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def test_table_entries():
    assert set(known_files.OFFICIAL_CHECKPOINT_PRESETS) <= set(KNOWN_FILES)
    for entry in KNOWN_FILES.values():
        if entry.key == known_files.DIGITS:  # shipped in the repository: its own full digest, nothing to fetch
            assert entry.url is None and len(entry.sha256) == 64
            continue
        assert entry.url and entry.url.startswith("https://") and entry.url.split("?")[0].endswith(entry.filename)
        assert entry.sha256 is None  # no publisher gives a full digest
    assert INCEPTION_URL.endswith("/v0.2.0/weights-inception-2015-12-05-6726825d.pth")
    assert KNOWN_FILES[INCEPTION].sha256_prefix == "6726825d"
    assert known_file("/x/VIRTUAL_imagenet512.npz").key == "imagenet-512" and known_file("other.npz") is None
    sit = KNOWN_FILES["sit-xl-2-256"]
    assert fetch_command(sit, "/w/SiT-XL-2-256.pt") == f"curl -fL -o /w/SiT-XL-2-256.pt '{sit.url}'"
    blank = dataclasses.replace(sit, url=None)
    assert where_to_get(blank) == "get it: see willisma/SiT download.py and README.md"


def test_importing_stays_cheap():
    code = "import sys, pipeline.data_config; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_missing_inception_weights_say_where_to_get_them(tmp_path):
    missing = tmp_path / "weights-inception-2015-12-05-6726825d.pth"
    (line,) = check_data_sources(_inception(str(missing)))
    assert line.startswith(f"extractor.weights: {missing} does not exist")
    assert "weights-inception-2015-12-05-6726825d.pth" in line and f"curl -fL -o {missing} {INCEPTION_URL}" in line
    assert "\n" not in line
    (unset,) = check_data_sources(_inception(None))
    assert unset.startswith("extractor.weights: not set") and INCEPTION_URL in unset
    assert check_data_sources({"extractor": {"kind": "digits"}}) == []
    (bad,) = check_data_sources({"extractor": {"kind": "clip"}})
    assert bad == "extractor.kind: unknown kind 'clip' (digits or inception)"


def test_inception_weights_hash_is_checked(tmp_path, monkeypatch):
    path, digest = _fake_weights(tmp_path)
    (line,) = check_data_sources(_inception(str(path)))
    assert line.startswith(f"extractor.weights: {path} has SHA-256 {digest}, expected SHA-256 starting 6726825d")
    assert INCEPTION_URL in line and "\n" not in line
    entry = dataclasses.replace(KNOWN_FILES[INCEPTION], sha256_prefix=digest[:8])
    monkeypatch.setitem(KNOWN_FILES, INCEPTION, entry)
    assert check_data_sources(_inception(str(path))) == []
    monkeypatch.setitem(KNOWN_FILES, INCEPTION, dataclasses.replace(entry, sha256=digest))
    assert check_data_sources(_inception(str(path))) == []
    path.write_bytes(b"changed bytes, other size")
    (changed,) = check_data_sources(_inception(str(path)))  # the cached digest is keyed on size and mtime
    assert "has SHA-256" in changed and f"expected SHA-256 {digest}" in changed


def test_needs_scopes_the_check(tmp_path):
    config = {"datasets": {"imagenet": {"kind": "imagefolder", "root": str(tmp_path / "no-tree")}},
              "references": {"imagenet-64": {"num": 4}},
              **_inception(str(tmp_path / "none.pth"))}
    everything = check_data_sources(config)  # the built reference's tree is the data set's: reported once
    assert [e.split(":")[0] for e in everything] == ["data set imagenet", "extractor.weights"]
    assert [e.split(":")[0] for e in check_data_sources(config, needs={"extractor"})] == ["extractor.weights"]
    assert check_data_sources(config, needs=set()) == []
    # Without the data sets' check, a built reference checks its own image tree.
    assert [e.split(":")[0] for e in check_data_sources(config, needs={"references"})] == ["reference imagenet-64"]
    assert check_data_sources(config, needs=DATA_PARTS) == everything
    assert check_data_sources({}, needs={"extractor"}) == ["extractor: not configured (kind: digits or inception)"]
    assert check_data_sources({}) == []
    with pytest.raises(ValueError, match="unknown data-check parts weights"):
        check_data_sources(config, needs={"extractor", "weights"})


def test_missing_adm_reference_gains_the_fetch_command(tmp_path):
    known, other = tmp_path / "VIRTUAL_imagenet256_labeled.npz", tmp_path / "mine-256.npz"
    config = {"references": {"imagenet-256": str(known), "other-256": str(other)}}
    first, second = check_data_sources(config, needs={"references"})
    url = KNOWN_FILES["imagenet-256"].url
    assert first == f"reference imagenet-256: reference batch {known} does not exist; get it: curl -fL -o {known} {url}"
    assert second == f"reference other-256: reference batch {other} does not exist"
    np.savez(known, arr_0=np.zeros((2, 256, 256, 3), np.uint8))
    assert check_data_sources({"references": {"imagenet-256": str(known)}}) == []


def test_official_checkpoints(tmp_path):
    present = tmp_path / "DiT-XL-2-512x512.pt"
    present.write_bytes(b"x")
    missing = tmp_path / "DiT-XL-2-256x256.pt"
    config = {"official_checkpoints": {"dit-xl-2-256": str(missing), "dit-xl-2-512": str(present),
                                       "sit-xl-2-256": "stand-in"}}
    (line,) = check_data_sources(config)
    url = KNOWN_FILES["dit-xl-2-256"].url
    assert line.startswith(f"official_checkpoints.dit-xl-2-256: {missing} does not exist")
    assert line.endswith(f"get it: curl -fL -o {missing} {url}")
    assert check_data_sources({"official_checkpoints": {"sit-xl-2-256": "stand-in"}}) == []
    assert check_data_sources(config, needs={"datasets", "extractor"}) == ["extractor: not configured "
                                                                           "(kind: digits or inception)"]
    odd = check_data_sources({"official_checkpoints": {"dit-xl-9": "stand-in", "sit-xl-2-256": None}})
    assert [e.split(":")[0] for e in odd] == ["official_checkpoints.dit-xl-9", "official_checkpoints.sit-xl-2-256"]
    assert check_data_sources({"official_checkpoints": ["dit-xl-2-256"]})[0].startswith("official_checkpoints: ")


def test_data_check_cli_checks_everything(tmp_path, capsys):
    config = tmp_path / "scale.yaml"
    config.write_text(yaml.safe_dump({**_inception(str(tmp_path / "none.pth")),
                                      "official_checkpoints": {"dit-xl-2-256": str(tmp_path / "none.pt")}}))
    assert data_main(["check", str(config)]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(":")[1].strip() for line in lines] == ["extractor.weights", "official_checkpoints.dit-xl-2-256"]
    assert all(line.startswith("error: ") and "get it: curl -fL -o" in line for line in lines)


def test_paper_scale_names_torch_fidelity_file():
    paper = yaml.safe_load((REPO / "config" / "scales" / "paper.yaml").read_text())
    assert Path(paper["extractor"]["weights"]).name == KNOWN_FILES[INCEPTION].filename
    for name, path in paper["references"].items():
        assert known_file(path) is KNOWN_FILES[name]


def test_the_shipped_digits_extractor_is_checked_and_loads_with_its_recorded_accuracy(monkeypatch):
    """Issue 19 item 4: mini/smoke score with eval/weights/digits-classifier.pt, the same bytes on every machine."""
    import json

    from eval.digits_classifier import load_digits_classifier
    from pipeline.known_files import DIGITS, DIGITS_WEIGHTS, file_sha256

    root = Path(__file__).resolve().parents[1]
    assert file_sha256(root / DIGITS_WEIGHTS) == KNOWN_FILES[DIGITS].sha256
    _, info = load_digits_classifier(root / DIGITS_WEIGHTS)
    report = json.loads((root / "eval" / "weights" / "digits-classifier.json").read_text())
    assert info["state_dict_sha256"] == report["state_dict_sha256"] and info["test_accuracy"] == report["test_accuracy"]
    assert info["state_dict_sha256"] in (root / "eval" / "weights" / "README.md").read_text()
    config = {"extractor": {"kind": "digits"}}
    assert check_data_sources(config, needs={"extractor"}) == []
    monkeypatch.setitem(KNOWN_FILES, DIGITS, dataclasses.replace(KNOWN_FILES[DIGITS], sha256="0" * 64))
    errors = check_data_sources(config, needs={"extractor"})
    assert len(errors) == 1 and errors[0].startswith(f"extractor: {DIGITS_WEIGHTS} has SHA-256 ce1a887a")
