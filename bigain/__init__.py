"""BiGain: each module directly in this folder is a command (`python -m bigain.<name>`); each subpackage is a
library with a public `__init__` (cli, models, data, diffusion, reduction, storage, testbed, zoo), and `runs` is the
commands' Python face. See the README's architecture section."""
