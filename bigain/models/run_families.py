"""Which pipeline families the runs (`bigain.classify`, `bigain.generate`) take, checked before any model loads.

A folder's family is read from its model_index.json (`_class_name`). U-Net pipelines, DiT, SD3 / FLUX.1,
FLUX.2 and Qwen-Image run; any other transformer pipeline (e.g. Wan, which the engine patches but the
runs cannot sample as video yet) is refused with the supported list. Video-only options (`st`) on an
image family are refused naming the option and the family.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

from bigain.models.flow import FLOW_PIPELINES
from bigain.models.flow_2026 import FLOW_2026_PIPELINES
from bigain.models.loading import find_model_folder

__all__ = ["RUN_PIPELINES", "VIDEO_OPTIONS", "check_run_family"]

RUN_PIPELINES: dict[str, str] = {"DiTPipeline": "dit", **FLOW_PIPELINES,
                                 **{k: v for k, v in FLOW_2026_PIPELINES.items() if v != "wan"}}
VIDEO_OPTIONS = {"st": "frames per spatio-temporal block"}


def _family(folder: Path) -> tuple[str | None, bool]:
    """(pipeline class name, whether the folder holds a transformer) from model_index.json."""
    index_file = folder / "model_index.json"
    if not index_file.is_file():
        return None, False
    index = json.loads(index_file.read_text())
    return index.get("_class_name"), "transformer" in index


def check_run_family(version: str, model_path: str | os.PathLike | None, reduction: Mapping[str, Any]) -> None:
    """ValueError when the model's pipeline family is not one the runs take, or a video option meets an image
    family; silent when the folder is not found yet (the loader reports that)."""
    folder = find_model_folder(version, model_path)
    if folder is None:
        return
    cls_name, has_transformer = _family(folder)
    if cls_name is not None and has_transformer and cls_name not in RUN_PIPELINES:
        family = FLOW_2026_PIPELINES.get(cls_name, cls_name)
        supported = ", ".join(f"{v} ({k})" for k, v in RUN_PIPELINES.items())
        raise ValueError(f"{folder} holds a {cls_name} (family {family}), which bigain's runs do not take; "
                         f"supported transformer families: {supported}, and U-Net (Stable Diffusion) pipelines")
    for option, what in VIDEO_OPTIONS.items():
        if reduction.get(option) is not None:
            family = RUN_PIPELINES.get(cls_name or "", cls_name or "this model")
            raise ValueError(f"--{option} ({what}) applies to video families (wan) only; {family} is an image family")
