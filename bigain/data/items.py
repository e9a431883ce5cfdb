"""What `bigain.generate` makes: one `Item` (index, prompt, class) per image of a run.

Items come from a classification dataset's labels (its class prompts), COCO-2017's first captions,
a ``--prompts_file``, or ``--classes`` x ``--images_per_class``; only labels are read, no image.
"""
from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from bigain.data.datasets import DatasetLayoutError, build_dataset, load_prompts, subset_indices

__all__ = ["Item", "build_items"]


@dataclass(frozen=True)
class Item:
    """One image to generate: its index in the run, prompt and/or class id."""

    index: int
    prompt: Optional[str]
    label: Optional[int]
    class_name: Optional[str] = None



def _coco_first_captions(root: Path) -> list[tuple[int, str]]:
    """(image id, first caption) of every COCO-2017 val image, sorted by image id."""
    path = root / "coco" / "annotations" / "captions_val2017.json"
    if not path.is_file():

        raise DatasetLayoutError(f"dataset 'coco2017': {path} not found (generation uses the first caption "
                                 "of each val2017 image)")
    data = json.loads(path.read_text())
    first: dict[int, tuple[int, str]] = {}
    for ann in data["annotations"]:
        cur = first.get(ann["image_id"])
        if cur is None or ann["id"] < cur[0]:
            first[ann["image_id"]] = (ann["id"], ann["caption"].strip())
    return [(img_id, first[img_id][1]) for img_id in sorted(first)]


def _read_prompts_file(path: Path) -> list[tuple[str, Optional[int]]]:
    """Prompts from a .txt (one per line) or a .csv with a ``prompt`` column (optional ``classidx``/``label``)."""
    if not path.is_file():
        raise FileNotFoundError(f"--prompts_file {path} not found")
    if path.suffix.lower() == ".csv":

        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if "prompt" not in (reader.fieldnames or []):
                raise ValueError(f"{path}: a prompt CSV needs a 'prompt' column")
            out = []
            for r in reader:
                lab = r.get("classidx") or r.get("label")
                out.append((r["prompt"], int(lab) if lab not in (None, "") else None))
    else:
        out = [(line.strip(), None) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not out:
        raise ValueError(f"--prompts_file {path} holds no prompts")
    return out


def _class_table(args: Any) -> Any:
    """The prompt CSV used for class prompts (``--prompts_csv`` or the dataset's), or None."""

    if args.prompts_csv:
        return load_prompts(args.prompts_csv)
    if args.dataset and args.dataset not in ("coco2017", "folder"):
        return load_prompts(args.dataset)
    return None


def build_items(args: Any) -> list[Item]:
    """Every item of a generation run (a `bigain.runs.GenerateRun`, or the generate command's parsed flags), in
    index order (labels only; no image is decoded)."""
    table = _class_table(args)
    by_id = {i: (p, n) for p, n, i in zip(table.prompts, table.classnames, table.classidx)} if table else {}

    def labelled(label: int) -> tuple[Optional[str], Optional[str]]:
        return by_id.get(int(label), (None, None))

    if args.prompts_file:
        pairs = _read_prompts_file(Path(args.prompts_file))
        items = [Item(i, p, lab, labelled(lab)[1] if lab is not None else None) for i, (p, lab) in enumerate(pairs)]
    elif args.classes is not None:
        items = []
        for c in args.classes:
            prompt, name = labelled(c)
            items += [Item(0, prompt, int(c), name)] * args.images_per_class
        items = [Item(i, it.prompt, it.label, it.class_name) for i, it in enumerate(items)]
    elif args.dataset == "coco2017":
        root = Path(args.dataset_root or os.environ.get("DATASET_ROOT", ""))
        items = [Item(i, cap, None, None) for i, (_, cap) in enumerate(_coco_first_captions(root))]
    else:
        ds = build_dataset(args.dataset, root=args.dataset_root, split=args.split, data_dir=args.data_dir,
                           prompts_csv=args.prompts_csv, skip_bad_images=getattr(args, "skip_bad_images", False))
        items = []
        for i, lab in enumerate(ds.labels):
            lab = lab[0] if isinstance(lab, (list, tuple)) else lab
            prompt, name = labelled(lab)
            items.append(Item(i, prompt, int(lab), name))
    keep = subset_indices(len(items), args.max_images)
    return [Item(j, items[i].prompt, items[i].label, items[i].class_name) for j, i in enumerate(keep)]
