"""Datasets fail loudly, naming what is wrong and the published layout, when the files on disk are laid out
otherwise."""
from __future__ import annotations

import pytest
from PIL import Image

from bigain.data import TORCHVISION_LAYOUTS, DatasetLayoutError, build_dataset, imagenet_wnids, load_prompts
from bigain.make_prompts import IMAGENET100_IDS, table_from_names, write_csv


def _png(path, size=(8, 8)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (120, 30, 200)).save(path)


def test_wnid_list_is_imagenet_order():
    wnids = imagenet_wnids()
    assert len(wnids) == 1000 == len(set(wnids)) and list(wnids) == sorted(wnids)
    assert wnids[0] == "n01440764" and wnids[IMAGENET100_IDS[0]] == "n01558993"  # tench; American robin


def test_imagenet100_names_missing_and_unexpected_folders(tmp_path):
    val = tmp_path / "imagenet-100" / "val"
    wnids = [imagenet_wnids()[i] for i in IMAGENET100_IDS]
    for w in wnids[1:]:
        _png(val / w / "a.JPEG")
    _png(val / "n01440764" / "a.JPEG")  # tench: an ImageNet class, but not one of ImageNet-100's
    with pytest.raises(DatasetLayoutError) as err:
        build_dataset("imagenet100", root=str(tmp_path))
    text = str(err.value)
    assert f"missing 1: {wnids[0]}" in text and "unexpected 1: n01440764" in text and "expected layout" in text


def test_imagenet_labels_follow_wnids_not_folder_order(tmp_path):
    val = tmp_path / "imagenet" / "val"
    for w in imagenet_wnids():
        (val / w).mkdir(parents=True)
    _png(val / "n01440764" / "a.JPEG")
    _png(val / imagenet_wnids()[999] / "b.JPEG")
    ds = build_dataset("imagenet", root=str(tmp_path), img_size=8)
    assert ds.labels == [0, 999] and ds[1][0].shape == (3, 8, 8)


def test_flat_imagenet_val_says_how_to_sort_it(tmp_path):
    for i in (1, 2):
        _png(tmp_path / "imagenet" / "val" / f"ILSVRC2012_val_{i:08d}.JPEG")
    with pytest.raises(DatasetLayoutError, match=r"flat.*torchvision.datasets.ImageNet\(.*split='val'\)"):
        build_dataset("imagenet", root=str(tmp_path))


@pytest.mark.parametrize("name", list(TORCHVISION_LAYOUTS))
def test_torchvision_datasets_name_what_is_missing_without_download_hint(name, tmp_path):
    with pytest.raises(DatasetLayoutError) as err:
        build_dataset(name, root=str(tmp_path))
    text = str(err.value)
    assert f"missing under {tmp_path / TORCHVISION_LAYOUTS[name][0]}" in text and "download" not in text


@pytest.mark.parametrize("name", list(TORCHVISION_LAYOUTS))
def test_dataset_unpacked_without_its_folder_gets_the_layout(name, tmp_path):
    split = "test"
    for item in TORCHVISION_LAYOUTS[name][1]:
        item = item.format(split=split)
        path = tmp_path / item
        path.mkdir(parents=True, exist_ok=True) if item.endswith("/") else (
            path.parent.mkdir(parents=True, exist_ok=True), path.write_bytes(b"x"))
    with pytest.raises(DatasetLayoutError) as err:
        build_dataset(name, root=str(tmp_path), split=split)
    text = str(err.value)
    assert f"directly in {tmp_path}" in text and f"move them into {tmp_path / TORCHVISION_LAYOUTS[name][0]}/" in text
    assert "download" not in text


def test_files_present_but_rejected_by_torchvision_no_download_hint(tmp_path):
    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    for item in ("batches.meta", "test_batch", *(f"data_batch_{i}" for i in range(1, 6))):
        (base / item).write_bytes(b"not a pickle")
    with pytest.raises(DatasetLayoutError) as err:
        build_dataset("cifar10", root=str(tmp_path))
    assert "torchvision could not read" in str(err.value) and "download=True" not in str(err.value)


def test_root_pointing_at_the_dataset_folder_itself(tmp_path):
    root = tmp_path / "oxford-iiit-pet"
    (root / "images").mkdir(parents=True)
    with pytest.raises(DatasetLayoutError, match="set DATASET_ROOT to its parent"):
        build_dataset("pets", root=str(root))


def test_folder_dataset_names_bad_images_and_skips_them_on_request(tmp_path, capsys):
    for cls in ("cat", "dog"):
        _png(tmp_path / cls / "0.png")
    (tmp_path / "dog" / "1.jpg").write_text("this is not a JPEG")
    (tmp_path / "dog" / "notes.txt").write_text("ignored: not an image extension")
    write_csv(table_from_names(["cat", "dog"], "a photo of a {}."), tmp_path / "prompts.csv")
    with pytest.raises(DatasetLayoutError, match=r"(?s)1 file\(s\) .* not readable images:\n  \S*dog/1.jpg: "
                                                 r"UnidentifiedImageError.*--skip_bad_images"):
        build_dataset("folder", data_dir=str(tmp_path))
    ds = build_dataset("folder", data_dir=str(tmp_path), skip_bad_images=True, img_size=8)
    assert len(ds) == 2 and ds.labels == [0, 1] and ds[1][0].shape == (3, 8, 8)
    assert "left out 1 unreadable file(s)" in capsys.readouterr().err


def test_prompt_csv_with_non_integer_classidx_names_file_and_line(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("prompt,classname,classidx\na cat,cat,0\na dog,dog,one\n")
    with pytest.raises(DatasetLayoutError, match=rf"{path}, line 3: classidx 'one' is not an integer"):
        load_prompts(path)


def test_coco_unpacked_as_distributed_says_where_to_move_it(tmp_path):
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_val2017.json").write_text("{}")
    (tmp_path / "coco" / "val2017").mkdir(parents=True)
    with pytest.raises(DatasetLayoutError) as err:
        build_dataset("coco2017", root=str(tmp_path))
    text = str(err.value)
    assert f"found {tmp_path / 'annotations' / 'instances_val2017.json'}: move it there" in text
    assert f"found {tmp_path / 'coco' / 'val2017'}/: move it there" in text
