"""Which pipeline families the runs (`bigain.classify`, `bigain.generate`) take, and which options apply to which
family, checked before any model loads (from the folder's model_index.json) and again on the loaded model.

U-Net pipelines, DiT, SD3 / FLUX.1, FLUX.2 and Qwen-Image run both commands; Wan (text-to-video) runs
`bigain.generate` only (a video model has no zero-shot image classification here); any other transformer
pipeline is refused with the supported list. Video-only options (`--st`, `--num_frames`) on an image family,
and `--height` / `--width` on a fixed-size family (U-Nets, DiT: the runs generate at their native size), are
refused naming the option and the family; Wan's frame count must be 4k + 1 (k: its VAE's temporal factor) and
`--st` must divide its latent frames.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Optional

from bigain.models.flow import FLOW_PIPELINES
from bigain.models.flow_2026 import FLOW_2026_PIPELINES
from bigain.models.loading import find_model_folder
from bigain.models.wan import frame_multiple

__all__ = ["CLASSIFY_PIPELINES", "RUN_PIPELINES", "SIZE_FAMILIES", "VIDEO_FAMILIES", "VIDEO_OPTIONS",
           "check_family_options", "check_run_family", "check_task"]

RUN_PIPELINES: dict[str, str] = {"DiTPipeline": "dit", **FLOW_PIPELINES, **FLOW_2026_PIPELINES}
VIDEO_FAMILIES = ("wan",)
CLASSIFY_PIPELINES = {k: v for k, v in RUN_PIPELINES.items() if v not in VIDEO_FAMILIES}
TASK_PIPELINES = {"generate": RUN_PIPELINES, "classify": CLASSIFY_PIPELINES}
VIDEO_OPTIONS = {"st": "frames per spatio-temporal block", "num_frames": "frames per video"}
SIZE_OPTIONS = ("height", "width")
SIZE_FAMILIES = ("sd3", "flux", "flux2", "qwen_image", "wan")  # pipelines that generate at any (multiple) size


def _family(folder: Path) -> tuple[str | None, bool]:
    """(pipeline class name, whether the folder holds a transformer) from model_index.json."""
    index_file = folder / "model_index.json"
    if not index_file.is_file():
        return None, False
    index = json.loads(index_file.read_text())
    return index.get("_class_name"), "transformer" in index


def _supported(pipelines: Mapping[str, str]) -> str:
    return ", ".join(f"{v} ({k})" for k, v in pipelines.items())


def check_task(family: str | None, task: str, where: str = "this model") -> None:
    """ValueError when a video family meets a command that does not take it (classification)."""
    if family in VIDEO_FAMILIES and task != "generate":
        raise ValueError(f"{where} is a {family} text-to-video model, which bigain.{task} does not take (video: "
                         f"bigain.generate only); supported transformer families: {_supported(TASK_PIPELINES[task])}, "
                         "and U-Net (Stable Diffusion) pipelines")


def check_family_options(family: str | None, options: Mapping[str, Any], frame_factor: int = 4,
                         default_frames: Optional[int] = None) -> None:
    """ValueError for an option the family does not take (naming both), a frame count not `frame_factor` k + 1, or
    an `st` that does not divide the latent frames (of `options['num_frames']`, else `default_frames`)."""
    label = family or "this model"
    for option, what in VIDEO_OPTIONS.items():
        if options.get(option) is not None and family not in VIDEO_FAMILIES:
            raise ValueError(f"--{option} ({what}) applies to video families ({', '.join(VIDEO_FAMILIES)}) only; "
                             f"{label} is an image family")
    given = [f"--{o}" for o in SIZE_OPTIONS if options.get(o) is not None]
    if given and family not in SIZE_FAMILIES:
        raise ValueError(f"{'/'.join(given)} applies to the families that generate at any size "
                         f"({', '.join(SIZE_FAMILIES)}); {label} generates at its native size only")
    frames = options.get("num_frames")
    if frames is not None and (frames < 1 or (frames - 1) % frame_factor):
        lower = (max(frames, 1) - 1) // frame_factor * frame_factor + 1
        raise ValueError(f"--num_frames {frames}: {label} makes {frame_factor}k + 1 frames (its VAE packs "
                         f"{frame_factor} frames per latent frame after the first); nearest: {lower} or "
                         f"{lower + frame_factor}")
    frames = frames if frames is not None else default_frames
    st = options.get("st")
    if st is not None and frames is not None and ((frames - 1) // frame_factor + 1) % st:
        raise ValueError(f"--st {st} does not divide the {(frames - 1) // frame_factor + 1} latent frames of "
                         f"{frames} frames (latent frames = (frames - 1) / {frame_factor} + 1)")


def check_run_family(version: str, model_path: str | os.PathLike | None, reduction: Mapping[str, Any],
                     task: str = "generate", options: Optional[Mapping[str, Any]] = None) -> None:
    """ValueError when the model's pipeline family is not one `task` takes, or an option (reducer `reduction` or run
    `options`: num_frames, height, width) does not apply to it; silent when the folder is not found yet (the loader
    reports that, and the run checks the loaded model)."""
    folder = find_model_folder(version, model_path)
    if folder is None:
        return
    cls_name, has_transformer = _family(folder)
    pipelines = TASK_PIPELINES[task]
    family = RUN_PIPELINES.get(cls_name or "")
    check_task(family, task, f"{folder} ({cls_name})")
    if cls_name is not None and has_transformer and cls_name not in pipelines:
        family = FLOW_2026_PIPELINES.get(cls_name, cls_name)
        raise ValueError(f"{folder} holds a {cls_name} (family {family}), which bigain's runs do not take; "
                         f"supported transformer families: {_supported(pipelines)}, and U-Net (Stable Diffusion) "
                         "pipelines")
    if family is None and cls_name is not None:
        family = "sd"  # a U-Net pipeline (StableDiffusion*Pipeline)
    check_family_options(family, {**reduction, **(options or {})},
                         frame_multiple(folder) if family in VIDEO_FAMILIES else 4)
