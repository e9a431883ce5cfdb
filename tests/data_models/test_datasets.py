"""bigain.data.datasets and the shipped prompt CSVs."""
from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from bigain.data import DATASETS, DatasetLayoutError, build_dataset, load_prompts, match_channels, subset_indices
from bigain.make_prompts import (
    CLASSNAMES,
    EXPECTED_COUNTS,
    IMAGENET100_IDS,
    TEMPLATES,
    class_table,
    main,
    table_from_names,
    write_csv,
)


@pytest.mark.parametrize("name", list(EXPECTED_COUNTS))
def test_shipped_prompt_csv(name):
    table = load_prompts(name)
    assert len(table) == EXPECTED_COUNTS[name]
    assert list(table.classidx) == sorted(table.classidx)
    assert all(p == TEMPLATES[name].format(c) for p, c in zip(table.prompts, table.classnames))
    if name in CLASSNAMES and name != "food":
        assert list(table.classnames) == CLASSNAMES[name]


def test_prompt_csvs_match_generator_and_protocol():
    assert load_prompts("imagenet100").classidx == IMAGENET100_IDS
    assert load_prompts("pets").prompts[0] == "a photo of a Abyssinian, a type of pet."
    assert load_prompts("food").prompts[16:18] == ("a photo of cheese plate, a type of food.",
                                                   "a photo of cheesecake, a type of food.")
    assert load_prompts("mnist").prompts[3] == 'a photo of the number: "3".'
    assert load_prompts("cifar10").prompts[0] == "a blurry photo of a airplane."
    for name in EXPECTED_COUNTS:
        rows = class_table(name)
        table = load_prompts(name)
        assert [r[0] for r in rows] == list(table.prompts) and [r[2] for r in rows] == list(table.classidx)


def test_make_prompts_cli_writes_csvs(tmp_path):
    main(["--datasets", "pets", "cifar10", "--out_dir", str(tmp_path)])
    assert load_prompts(tmp_path / "pets_prompts.csv") == load_prompts("pets")
    folder = tmp_path / "mine"
    for c in ("b_cls", "a_cls"):
        (folder / c).mkdir(parents=True)
    main(["--folder", str(folder), "--template", "a {} thing."])
    table = load_prompts(folder / "prompts.csv")
    assert table.prompts == ("a a cls thing.", "a b cls thing.") and table.classidx == (0, 1)


def test_fmnist_subset_and_full_test_set():
    ds = build_dataset("fmnist")
    assert len(ds) == 1000 and ds.split == "subset" and len(ds.classes) == 10
    x, y = ds[0]
    assert x.shape == (1, 32, 32) and x.min() >= -1 and x.max() <= 1 and 0 <= y < 10
    assert build_dataset("fmnist", img_size=16)[3][0].shape == (1, 16, 16)
    assert len(build_dataset("fmnist", split="test")) == 10000


def _png(path, color=(200, 10, 10), size=(40, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


def test_folder_dataset(tmp_path):
    for cls in ("cat", "dog"):
        _png(tmp_path / cls / "0.png")
    with pytest.raises(DatasetLayoutError, match="prompts.csv not found"):
        build_dataset("folder", data_dir=str(tmp_path))
    write_csv(table_from_names(["cat", "dog"], "a photo of a {}.", ids=[7, 3]), tmp_path / "prompts.csv")
    ds = build_dataset("folder", data_dir=str(tmp_path), img_size=24)
    x, y = ds[0]
    assert x.shape == (3, 24, 24) and ds.labels == [7, 3] and ds.classes.classidx == (3, 7)
    _png(tmp_path / "fox" / "0.png")
    with pytest.raises(DatasetLayoutError, match=r"class folders \['fox'\] have no row"):
        build_dataset("folder", data_dir=str(tmp_path))


def test_imagenet100_labels_are_imagenet_ids(tmp_path):
    from bigain.data import imagenet_wnids

    for k in IMAGENET100_IDS:
        _png(tmp_path / "imagenet-100" / "val" / imagenet_wnids()[k] / "a.JPEG", size=(8, 8))
    ds = build_dataset("imagenet100", root=str(tmp_path))
    assert sorted(set(ds.labels)) == list(IMAGENET100_IDS) and ds.labels[0] == 15
    (tmp_path / "imagenet-100" / "val" / "extra").mkdir()
    with pytest.raises(DatasetLayoutError,
                       match="101 class folders, expected the 100 wnid folders; unexpected 1: extra"):
        build_dataset("imagenet100", root=str(tmp_path))


def test_coco_is_multilabel(tmp_path):
    ann = {"categories": [{"id": i + 1 + (i > 10), "name": n} for i, n in enumerate(CLASSNAMES["coco2017"])],
           "images": [{"id": 1, "file_name": "1.jpg"}, {"id": 2, "file_name": "2.jpg"},
                      {"id": 3, "file_name": "3.jpg"}],
           "annotations": [{"image_id": 1, "category_id": 1}, {"image_id": 1, "category_id": 18},
                           {"image_id": 1, "category_id": 1}, {"image_id": 2, "category_id": 3}]}
    (tmp_path / "coco" / "annotations").mkdir(parents=True)
    (tmp_path / "coco" / "annotations" / "instances_val2017.json").write_text(json.dumps(ann))
    for i in (1, 2, 3):
        _png(tmp_path / "coco" / "images" / "val2017" / f"{i}.jpg")
    ds = build_dataset("coco2017", root=str(tmp_path), img_size=16)
    assert ds.multilabel and ds.labels == [[0, 16], [2]]  # image 3 has no objects: left out
    assert ds[1][0].shape == (3, 16, 16)


@pytest.mark.parametrize("name", [n for n, info in DATASETS.items() if info.needs_root])
def test_missing_root_and_layout_errors(name, tmp_path, monkeypatch):
    monkeypatch.delenv("DATASET_ROOT", raising=False)
    with pytest.raises(DatasetLayoutError, match="needs DATASET_ROOT.*expected layout"):
        build_dataset(name)
    with pytest.raises(DatasetLayoutError, match="expected layout: \\$DATASET_ROOT"):
        build_dataset(name, root=str(tmp_path))


def test_bad_names_and_splits():
    with pytest.raises(ValueError, match="unknown dataset 'imgnet'; allowed: imagenet, imagenet100"):
        build_dataset("imgnet")
    with pytest.raises(ValueError, match="no split 'train'; allowed: subset, test"):
        build_dataset("fmnist", split="train")
    with pytest.raises(DatasetLayoutError, match="needs --data_dir"):
        build_dataset("folder")


def test_helpers():
    gray = torch.rand(1, 1, 4, 4)
    assert match_channels(gray, 3).shape == (1, 3, 4, 4)
    assert torch.allclose(match_channels(gray.expand(1, 3, 4, 4), 1), gray)
    assert subset_indices(10, None) == list(range(10)) and subset_indices(1000, 4) == [0, 250, 500, 750]
    assert subset_indices(1000, 4, prefix=True) == [0, 1, 2, 3]
    ds = build_dataset("fmnist")
    assert sorted(ds.labels[i] for i in subset_indices(len(ds), 10, prefix=ds.prefix_subsets)) == list(range(10))
