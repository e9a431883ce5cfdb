"""Data: evaluation datasets and class prompt tables (`datasets`, CSVs in `prompts/`), on-disk layout checks
(`layouts`) and the items a generation run makes (`items`)."""
from bigain.data.datasets import (
    DATASETS,
    IMAGENET100_IDS,
    INTERPOLATIONS,
    PROMPTS_DIR,
    ClassTable,
    DatasetInfo,
    DatasetLayoutError,
    EvalDataset,
    build_dataset,
    check_dataset_args,
    load_prompts,
    make_transform,
    match_channels,
    subset_indices,
)
from bigain.data.items import Item, build_items
from bigain.data.layouts import TORCHVISION_LAYOUTS, imagenet_wnids

__all__ = [
    "DATASETS", "IMAGENET100_IDS", "INTERPOLATIONS", "PROMPTS_DIR", "ClassTable", "DatasetInfo", "DatasetLayoutError",
    "EvalDataset", "build_dataset", "check_dataset_args", "load_prompts", "make_transform", "match_channels",
    "subset_indices", "Item", "build_items", "TORCHVISION_LAYOUTS", "imagenet_wnids",
]
