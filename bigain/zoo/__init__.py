"""The one tiny-model zoo (offline, CPU, seeded, random weights built from configs), used by the tests, `bigain.demo`
and eval.speed's tiny presets: denoisers and their inputs (`denoisers`, `mmdit`) and whole pipelines saved like real
checkpoints (`pipelines`, `flow_pipelines`), and the demo's backbones (`demo`)."""
from bigain.zoo.demo import demo_models
from bigain.zoo.denoisers import (
    IDLE,
    METHODS,
    PER_SAMPLE,
    dit_inputs,
    pixart_inputs,
    randomize_zero_init,
    sd2_sized_unet,
    tiny_dit,
    tiny_pixart,
    tiny_sd_unet,
    tiny_sdxl_unet,
    unet_inputs,
)
from bigain.zoo.flow_pipelines import build_tiny_flux, build_tiny_sd3
from bigain.zoo.flow_pipelines_2026 import build_tiny_flux2, build_tiny_qwen_image, build_tiny_wan
from bigain.zoo.mmdit import TEXT_TOKENS, flux_image_ids, flux_inputs, image_tokens, sd3_inputs, tiny_flux, tiny_sd3
from bigain.zoo.pipelines import (
    build_clip_tokenizer,
    build_tiny_dit,
    build_tiny_pixel_dit,
    build_tiny_pixel_unet,
    build_tiny_sd,
    install_in_hf_cache,
    tiny_scheduler,
)

__all__ = [
    "demo_models", "IDLE", "METHODS", "PER_SAMPLE", "dit_inputs", "pixart_inputs", "randomize_zero_init",
    "sd2_sized_unet", "tiny_dit",
    "tiny_pixart", "tiny_sd_unet", "tiny_sdxl_unet", "unet_inputs", "build_tiny_flux", "build_tiny_sd3",
    "build_tiny_flux2", "build_tiny_qwen_image", "build_tiny_wan", "TEXT_TOKENS",
    "flux_image_ids", "flux_inputs", "image_tokens", "sd3_inputs", "tiny_flux", "tiny_sd3", "build_clip_tokenizer",
    "build_tiny_dit", "build_tiny_pixel_dit", "build_tiny_pixel_unet", "build_tiny_sd", "install_in_hf_cache",
    "tiny_scheduler",
]
