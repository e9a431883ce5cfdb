"""What every command line shares: flag groups and output checks (`flags`), YAML config files (`config`) and the
checked argparse types (`argtypes`)."""
from bigain.cli import argtypes
from bigain.cli.argtypes import (
    AUTO,
    batch_size,
    finite_float,
    fraction,
    nonneg_float,
    nonneg_int,
    positive_float,
    positive_int,
)
from bigain.cli.config import (
    add_config_arg,
    effective_config,
    list_presets,
    option_actions,
    option_dest,
    parse_args_with_config,
    read_yaml_mapping,
    save_effective_config,
    validate_config,
)
from bigain.cli.flags import (
    add_data_args,
    add_max_images_arg,
    add_model_args,
    add_output_args,
    add_shard_args,
    add_threads_arg,
    check_output_dir,
    check_output_file,
    enable_tf32,
    launch_shard,
    model_label,
    run_cli,
)

__all__ = [
    "argtypes", "AUTO", "batch_size", "finite_float", "fraction", "nonneg_float", "nonneg_int", "positive_float",
    "positive_int",
    "add_config_arg", "effective_config", "list_presets", "option_actions", "option_dest", "parse_args_with_config",
    "read_yaml_mapping", "save_effective_config", "validate_config", "add_data_args", "add_max_images_arg",
    "add_model_args", "add_output_args", "add_shard_args", "add_threads_arg", "check_output_dir", "check_output_file",
    "enable_tf32", "launch_shard", "model_label", "run_cli",
]
