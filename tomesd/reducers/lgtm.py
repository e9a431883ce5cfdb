"""Former name of `tomesd.reducers.bigain_tm` (the module registering `bigain_tm`), importable for one release."""
import warnings

from tomesd.reducers.bigain_tm import LGTM, LGTMOptions, block_argmin_destinations, laplacian_scores, laplacian_weight

__all__ = ["LGTM", "LGTMOptions", "block_argmin_destinations", "laplacian_scores", "laplacian_weight"]
warnings.warn("tomesd.reducers.lgtm is now tomesd.reducers.bigain_tm; the old name goes in the next release",
              DeprecationWarning, stacklevel=2)
