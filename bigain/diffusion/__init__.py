"""Diffusion procedures on a loaded model: the diffusion classifier (`classifier`) and the samplers (`samplers`)."""
from bigain.diffusion.classifier import (
    LOSSES,
    ClassifyResult,
    RunContext,
    StageSchedule,
    classify_dataset_image,
    classify_image,
    classify_many,
    forward_process,
    make_context,
)
from bigain.diffusion.samplers import (
    SAMPLERS,
    CallStats,
    Schedule,
    guided_eps_fn,
    initial_noise,
    make_schedule,
    sample_ddim,
    sample_euler,
    sample_flow,
)

__all__ = [
    "LOSSES", "ClassifyResult", "RunContext", "StageSchedule", "classify_dataset_image", "classify_image",
    "classify_many", "forward_process", "make_context", "SAMPLERS", "CallStats", "Schedule", "guided_eps_fn",
    "initial_noise",
    "make_schedule", "sample_ddim", "sample_euler", "sample_flow",
]
