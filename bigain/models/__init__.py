"""Models behind one interface: loading by version, hub id or folder (`loading`), the `LoadedModel` interface
(`loaded_model`), rectified-flow models (`flow`; FLUX.2 / Qwen-Image: `flow_2026`; Wan video: `wan`), the Hugging Face
cache (`hub`)
and weight identity (`identity`)."""
from bigain.models.flow import FLOW_VERSIONS, FlowLoadedModel, flow_sigmas, is_flow_folder, load_flow_folder
from bigain.models.flow_2026 import FLOW_2026_VERSIONS, Flux2LoadedModel, QwenImageLoadedModel
from bigain.models.hub import cached_snapshot, hub_cache_dir, hub_offline, select_repo_files, weight_format
from bigain.models.identity import model_identity
from bigain.models.loaded_model import LoadedModel, OutputSize
from bigain.models.loading import (
    FORMER_HUB_IDS,
    MODEL_VERSIONS,
    ModelFolderError,
    ModelNotFoundError,
    check_device,
    check_image_size,
    check_steps,
    find_model_folder,
    find_scheduler_config,
    hub_candidates,
    load_model,
    resolve_device,
    resolve_dtype,
    resolve_run_device,
)
from bigain.models.wan import WanLoadedModel

__all__ = [
    "FLOW_VERSIONS", "FLOW_2026_VERSIONS", "Flux2LoadedModel", "QwenImageLoadedModel",
    "FlowLoadedModel", "flow_sigmas", "is_flow_folder", "load_flow_folder", "cached_snapshot",
    "hub_cache_dir", "hub_offline", "select_repo_files", "weight_format", "model_identity", "LoadedModel",
    "FORMER_HUB_IDS", "MODEL_VERSIONS", "ModelFolderError", "ModelNotFoundError", "check_image_size", "hub_candidates",
    "load_model", "resolve_device", "resolve_dtype", "resolve_run_device", "check_device", "check_steps",
    "find_scheduler_config", "find_model_folder", "OutputSize", "WanLoadedModel",
]
