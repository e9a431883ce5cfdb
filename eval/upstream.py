"""Old spelling of `python -m eval.speed.upstream` (the module moved into the eval.speed package)."""
import runpy

if __name__ == "__main__":
    runpy.run_module("eval.speed.upstream", run_name="__main__")
