"""Embedded digits split, ADM centre crop, class-folder reader, reference npz and data-source checks."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from PIL import Image
from sklearn.datasets import load_digits

from core.io import DataSourceError
from core.npz import validate_adm_npz
from pipeline import data
from pipeline.data_config import check_data_sources
from pipeline.datasets import (
    ImageFolderDataset,
    center_crop_arr,
    digits_split,
    digits_split_indices,
    stratified_reference_indices,
)
from pipeline.references import reference_sidecar_path, write_reference_npz
from tests.test_data_helpers import TREE_CLASSES, make_image_tree

# ------------------------------------------------------------------------------------------ digits


def test_digits_split_sizes_dtype_and_pixel_mapping():
    split = digits_split()
    train_x, train_y = split["train"]
    ref_x, ref_y = split["reference"]
    assert train_x.shape == (1497, 8, 8, 1) and ref_x.shape == (300, 8, 8, 1)
    assert train_x.dtype == np.uint8 and train_y.dtype == np.int64 and ref_y.dtype == np.int64
    raw = load_digits()
    idx = digits_split_indices()
    expected = np.rint(raw.images * 255 / 16).astype(np.uint8)
    np.testing.assert_array_equal(train_x[..., 0], expected[idx["train"]])
    np.testing.assert_array_equal(ref_y, raw.target[idx["reference"]])
    assert train_x.max() == 255 and train_x.min() == 0
    assert round(8 * 255 / 16) == 128 and (expected[raw.images == 8] == 128).all()


def test_digits_split_is_a_fixed_stratified_partition():
    idx = digits_split_indices()
    again = digits_split_indices()
    np.testing.assert_array_equal(idx["reference"], again["reference"])
    union = np.concatenate([idx["train"], idx["reference"]])
    assert len(np.unique(union)) == 1797 == len(union)
    labels = load_digits().target
    counts = np.bincount(labels, minlength=10)
    ref_counts = np.bincount(labels[idx["reference"]], minlength=10)
    share = 300 * counts / counts.sum()
    assert ((ref_counts == np.floor(share)) | (ref_counts == np.ceil(share))).all()
    assert ref_counts.sum() == 300


def test_stratified_indices_depend_on_seed():
    labels = load_digits().target
    a = stratified_reference_indices(labels, 300, seed=0)
    b = stratified_reference_indices(labels, 300, seed=1)
    assert not np.array_equal(a, b)
    np.testing.assert_array_equal(np.bincount(labels[a]), np.bincount(labels[b]))


# ------------------------------------------------------------------------------------ centre crop


def test_center_crop_keeps_the_centre_of_a_wide_image():
    width, height = 256, 128
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[:, : width // 4] = (255, 0, 0)
    pixels[:, width // 4: 3 * width // 4] = (0, 255, 0)
    pixels[:, 3 * width // 4:] = (0, 0, 255)
    out = center_crop_arr(Image.fromarray(pixels), 16)
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    # The 128-px short side is halved to 64, 32 (BOX) then resized to 16: the centre square is the green half.
    assert (out[:, 2:-2, 1] > 240).all() and (out[:, 2:-2, 0] < 15).all() and (out[:, 2:-2, 2] < 15).all()


@pytest.mark.parametrize("size", [(640, 480), (30, 50), (7, 9)])
def test_center_crop_shapes_grey_and_upscaling(size):
    grey = Image.new("L", size, color=77)
    out = center_crop_arr(grey, 16)
    assert out.shape == (16, 16, 3)
    assert np.abs(out.astype(int) - 77).max() <= 1


def test_center_crop_tall_image_crops_vertically():
    pixels = np.zeros((90, 30, 3), np.uint8)
    pixels[30:60] = 200
    out = center_crop_arr(Image.fromarray(pixels), 8)
    assert out.shape == (8, 8, 3) and (out[1:-1] > 190).all()


# ------------------------------------------------------------------------------------ image folder


def test_image_folder_order_labels_and_filtering(tmp_path):
    expected = make_image_tree(tmp_path)
    ds = ImageFolderDataset(tmp_path, 8)
    assert ds.classes == sorted(TREE_CLASSES)
    assert ds.files == [p for p, _ in expected]
    assert ds.labels.tolist() == [label for _, label in expected]
    assert len(ds) == sum(TREE_CLASSES.values())
    image, label = ds[3]
    assert image.shape == (8, 8, 3) and image.dtype == np.uint8 and label == expected[3][1]
    assert any("nested" in p for p in ds.files)
    assert ds.describe()["num_classes"] == 3
    assert ds.file_list_digest() == ImageFolderDataset(tmp_path, 16).file_list_digest()


def test_image_folder_errors_are_one_line(tmp_path):
    with pytest.raises(DataSourceError, match="does not exist"):
        ImageFolderDataset(tmp_path / "missing", 8)
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(DataSourceError, match="holds no images"):
        ImageFolderDataset(tmp_path, 8)


# ------------------------------------------------------------------------------------ reference npz


def test_reference_npz_for_digits(tmp_path):
    sidecar = write_reference_npz("digits", tmp_path / "ref.npz")
    with np.load(tmp_path / "ref.npz") as npz:
        images, labels = npz["arr_0"], npz["arr_1"]
    assert images.shape == (300, 8, 8, 1) and images.dtype == np.uint8 and labels.dtype == np.int64
    ref_x, ref_y = digits_split()["reference"]
    lookup = {x.tobytes(): y for x, y in zip(ref_x, ref_y)}
    assert all(lookup[x.tobytes()] == y for x, y in zip(images, labels))
    np.testing.assert_array_equal(np.bincount(labels), np.bincount(ref_y))
    assert not np.array_equal(labels, np.sort(labels))  # never class-sorted
    saved = reference_sidecar_path(tmp_path / "ref.npz")
    assert saved.exists() and sidecar["num_images"] == 300 and "git_commit" in sidecar["provenance"]


def test_reference_npz_subset_is_seeded(tmp_path):
    write_reference_npz("digits", tmp_path / "a.npz", num=50, seed=3)
    write_reference_npz("digits", tmp_path / "b.npz", num=50, seed=3)
    write_reference_npz("digits", tmp_path / "c.npz", num=50, seed=4)
    load = lambda name: np.load(tmp_path / name)["arr_0"]  # noqa: E731
    assert load("a.npz").shape == (50, 8, 8, 1)
    np.testing.assert_array_equal(load("a.npz"), load("b.npz"))
    assert not np.array_equal(load("a.npz"), load("c.npz"))
    with pytest.raises(DataSourceError, match="holds 300"):
        write_reference_npz("digits", tmp_path / "d.npz", num=301)


def test_reference_npz_for_image_folder(tmp_path):
    make_image_tree(tmp_path / "tree")
    write_reference_npz("imagefolder", tmp_path / "ref.npz", root=tmp_path / "tree", image_size=16, num=5,
                        workers=2)
    ds = ImageFolderDataset(tmp_path / "tree", 16)
    lookup = {ds[i][0].tobytes(): ds[i][1] for i in range(len(ds))}
    with np.load(tmp_path / "ref.npz") as npz:
        assert npz["arr_0"].shape == (5, 16, 16, 3)
        assert all(lookup[x.tobytes()] == y for x, y in zip(npz["arr_0"], npz["arr_1"]))


def _adm_batch(path, images, **extra):
    np.savez(path, arr_0=images, **extra)
    return path


def test_existing_adm_batch_is_accepted_as_is(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    batch = _adm_batch(tmp_path / "VIRTUAL_tiny16_labeled.npz", images, mu=np.zeros(3))
    out = tmp_path / "work" / "ref.npz"
    sidecar = write_reference_npz("npz", out, root=batch, image_size=16)
    assert out.is_symlink() and out.resolve() == batch.resolve()
    assert sidecar["num_images"] == 4 and sidecar["has_labels"] is False and "mu" in sidecar["keys"]
    write_reference_npz("npz", tmp_path / "copy.npz", root=batch, copy=True)
    np.testing.assert_array_equal(np.load(tmp_path / "copy.npz")["arr_0"], images)
    with pytest.raises(DataSourceError, match="16 px images, expected 32"):
        write_reference_npz("npz", tmp_path / "x.npz", root=batch, image_size=32)


def test_malformed_adm_batches_are_rejected(tmp_path):
    no_images = _adm_batch(tmp_path / "a.npz", np.zeros((2, 4, 4, 3), np.uint8))
    np.savez(no_images, mu=np.zeros(3))
    with pytest.raises(DataSourceError, match="no arr_0"):
        validate_adm_npz(no_images)
    floats = _adm_batch(tmp_path / "b.npz", np.zeros((2, 4, 4, 3), np.float32))
    with pytest.raises(DataSourceError, match="uint8 NHWC"):
        validate_adm_npz(floats)
    (tmp_path / "c.npz").write_bytes(b"not a zip")
    with pytest.raises(DataSourceError, match="not a readable npz"):
        validate_adm_npz(tmp_path / "c.npz")
    with pytest.raises(DataSourceError, match="does not exist"):
        validate_adm_npz(tmp_path / "missing.npz")


# ------------------------------------------------------------------------------------ DAG-time checks


def test_check_data_sources_reports_each_missing_source(tmp_path):
    good_tree = tmp_path / "tree"
    make_image_tree(good_tree)
    vae_dir = tmp_path / "weights" / "sd-vae-ft-ema"  # only presence is checked at DAG time
    vae_dir.mkdir(parents=True)
    (vae_dir / "config.json").write_text("{}")
    (vae_dir / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    config = {
        "weights_dir": str(tmp_path / "weights"),
        "datasets": {
            "digits": {"kind": "digits"},
            "tiny": {"kind": "imagefolder", "root": str(good_tree)},
            "imagenet": {"kind": "imagefolder", "root": str(tmp_path / "no_imagenet")},
        },
        "references": {
            "digits-8": "built",
            "tiny-16": "built",
            "imagenet-256": str(tmp_path / "VIRTUAL_imagenet256_labeled.npz"),
            "cifar-32": "built",
        },
        "autoencoders": {
            "identity": {"kind": "identity"},
            "ema": {"kind": "sd-vae", "path": "sd-vae-ft-ema"},  # found in weights_dir
            "folder": {"kind": "sd-vae", "path": str(vae_dir), "posterior": "mean"},
            "mse": {"kind": "sd-vae", "path": "stabilityai/sd-vae-ft-mse"},  # absent
        },
    }
    errors = check_data_sources(config)
    assert len(errors) == 4, errors
    assert any("no_imagenet" in e and "does not exist" in e for e in errors)
    assert any("VIRTUAL_imagenet256_labeled.npz does not exist" in e for e in errors)
    assert any(e.startswith("reference cifar-32: unknown data set 'cifar'") for e in errors)
    mse = next(e for e in errors if e.startswith("autoencoder mse"))
    assert "hf download stabilityai/sd-vae-ft-mse" in mse and str(tmp_path / "weights" / "sd-vae-ft-mse") in mse
    assert all("\n" not in e for e in errors)
    assert check_data_sources({"datasets": {"digits": {"kind": "digits"}}}) == []
    assert check_data_sources({}) == []


def test_check_cli_and_reference_cli_fail_with_one_line(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"datasets": {"in": {"kind": "imagefolder", "root": "/nope/x"}}}))
    assert data.main(["check", str(cfg)]) == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        "error: data set in: image folder /nope/x does not exist or is not a directory"]
    with pytest.raises(SystemExit) as exit_info:
        data.main(["reference", "--dataset", "imagefolder", "--root", str(tmp_path / "none"),
                   "--image-size", "8", "--out", str(tmp_path / "r.npz")])
    message = str(exit_info.value.code)
    assert message.startswith("error: image folder") and "\n" not in message
    assert not (tmp_path / "r.npz").exists()


def test_reference_cli_writes_digits(tmp_path):
    assert data.main(["reference", "--dataset", "digits", "--out", str(tmp_path / "r.npz"), "--num", "20"]) == 0
    assert np.load(tmp_path / "r.npz")["arr_0"].shape == (20, 8, 8, 1)
