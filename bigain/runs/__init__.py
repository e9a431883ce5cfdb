"""Typed runs: one frozen dataclass per task holding every setting (its run folder and fingerprint derived from
it) and one function doing the work. The CLIs (bigain.classify, bigain.generate) parse flags into a run;
bigain.benchmark and bigain.sweep build runs directly.

    from bigain.runs import ClassifyRun, run_classification
    row = run_classification(ClassifyRun(dataset="fmnist", split="subset", model_path=..., max_images=20))
"""
from bigain.runs.classification import ClassifyRun, run_classification
from bigain.runs.generation import GenerateRun, run_generation

__all__ = ["ClassifyRun", "GenerateRun", "run_classification", "run_generation"]
