"""The natural-texture testbed: the class rule, the shipped subset, and the train/test pixel separation."""
import dataclasses
import json

import numpy as np
import pytest
import torch

from bigain.data import build_dataset, check_dataset_args, load_prompts
from bigain.testbed import sources, textures, train, train_classifier
from bigain.testbed.data import load_test_subset as fmnist_subset
from bigain.testbed.reference_classifier import load_reference_classifier

pytest.importorskip("skimage")


@pytest.fixture(scope="module")
def photographs():
    return {s.loader: textures.grey_photograph(s.loader) for s in textures.SOURCES}


def test_classes_follow_the_written_rule(photographs):
    """Ten classes, ordered as documented; the shorter side is capped at 512 px; grey uint8."""
    assert len(textures.CLASS_NAMES) == textures.NUM_CLASSES == 10 == len(set(textures.CLASS_NAMES))
    for image in photographs.values():
        assert image.dtype == np.uint8 and image.ndim == 2 and min(image.shape) <= textures.MAX_SHORT_SIDE
    assert photographs["retina"].shape == (512, 512) and photographs["hubble_deep_field"].shape == (512, 587)


def test_shipped_subset_is_balanced_interleaved_and_reproducible():
    x, y = textures.load_test_subset()
    assert x.shape == (1000, 1, 32, 32) and x.dtype == np.float32 and -1.0 <= x.min() and x.max() <= 1.0
    assert np.bincount(y, minlength=10).tolist() == [100] * 10
    assert sorted(y[:10].tolist()) == list(range(10))  # every prefix of 10k crops holds k per class
    rebuilt, labels, _ = textures.make_crops("subset")
    shipped, shipped_labels = textures.load_test_subset(as_uint8=True)
    np.testing.assert_array_equal(rebuilt, shipped)
    np.testing.assert_array_equal(labels, shipped_labels)


def _covered(shape, positions):
    """Pixels covered by 32x32 crops at `positions` (top-left y, x)."""
    mask = np.zeros(shape, bool)
    for y, x in positions:
        mask[y:y + textures.CROP, x:x + textures.CROP] = True
    return mask


def test_no_test_pixel_is_ever_seen_in_training(photographs):
    """Every pixel a training crop may cover is disjoint from every pixel a test crop may cover."""
    for image in photographs.values():
        train_mask = _covered(image.shape, textures.textured_positions(image, "train")[::7])
        test_positions = textures.textured_positions(image, "test")
        test_mask = _covered(image.shape, test_positions)
        assert len(test_positions) >= textures.TEST_PER_CLASS
        assert not (train_mask & test_mask).any()
        assert not (train_mask & textures.test_pixel_mask(image.shape)).any()
        assert 0.2 < textures.test_pixel_mask(image.shape).mean() < 0.3  # a quarter of the tiles hold test crops


def test_drawn_crops_are_textured_and_where_they_say(photographs):
    crops, labels, where = textures.make_crops("subset")
    for crop, (label, y, x) in zip(crops[:200], where[:200]):
        image = photographs[textures.SOURCES[label].loader]
        np.testing.assert_array_equal(crop, image[y:y + 32, x:x + 32])
        assert crop.astype(np.float64).std() >= textures.MIN_CROP_STD
        test_pixels = textures.test_pixel_mask(image.shape)
        assert test_pixels[y:y + 32, x:x + 32].all()
    assert (labels == where[:, 0]).all()


def test_train_split_is_deterministic_and_balanced(photographs):
    a, ya, wa = textures.make_crops("train", per_class=20)
    b, yb, _ = textures.make_crops("train", per_class=20)
    np.testing.assert_array_equal(a, b)
    assert np.bincount(ya).tolist() == [20] * 10
    for label, y, x in wa:
        shape = photographs[textures.SOURCES[label].loader].shape
        assert not textures.test_pixel_mask(shape)[y:y + 32, x:x + 32].any()


def test_bad_split_names_the_allowed_ones():
    with pytest.raises(ValueError, match="subset"):
        textures.make_crops("val")
    with pytest.raises(ValueError, match="allowed: subset, test"):
        check_dataset_args("textures", split="train")


def test_dataset_textures_works_where_fmnist_does():
    ds = build_dataset("textures")
    assert len(ds) == 1000 and ds.prefix_subsets and ds.classes.classnames == tuple(textures.CLASS_NAMES)
    assert load_prompts("textures").classnames == tuple(textures.CLASS_NAMES)
    image, label = ds[3]
    assert isinstance(image, torch.Tensor) and label == int(textures.load_test_subset()[1][3])


def test_trainers_take_dataset_textures(tmp_path, monkeypatch):
    """Two DiT steps on the texture subset export a model that names the texture classes."""
    out = str(tmp_path / "dit")
    train.main(["--model", "dit", "--size", "tiny", "--batch_size", "4", "--threads", "1", "--device", "cpu",
                "--dataset", "textures", "--data", "subset", "--eval_images", "10", "--warmup", "1",
                "--output_dir", out, "--steps", "2"])
    info = json.loads((tmp_path / "dit" / "testbed.json").read_text())
    assert info["class_names"] == textures.CLASS_NAMES and "textures" in info["dataset"]
    small = dataclasses.replace(sources.TESTBED_DATA["textures"], load=lambda split: textures.load_test_subset())
    monkeypatch.setitem(sources.TESTBED_DATA, "textures", small)
    cnn = tmp_path / "cnn"
    train_classifier.main(["--dataset", "textures", "--output_dir", str(cnn), "--epochs", "1", "--batch_size", "250",
                           "--max_train", "500"])
    assert json.loads((cnn / "config.json").read_text())["dataset"] == "textures"
    load_reference_classifier(str(cnn))
    assert fmnist_subset()[0].shape == textures.load_test_subset()[0].shape  # same input format as Fashion-MNIST
