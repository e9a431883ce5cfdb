"""Former name of `tomesd.reducers.bigain_td` (the module registering `bigain_td`), importable for one release."""
import warnings

from tomesd.reducers.bigain_td import IEKVD, IEKVDOptions, blended_kv_source, scheduled_alpha

__all__ = ["IEKVD", "IEKVDOptions", "blended_kv_source", "scheduled_alpha"]
warnings.warn("tomesd.reducers.iekvd is now tomesd.reducers.bigain_td; the old name goes in the next release",
              DeprecationWarning, stacklevel=2)
