"""eval.speed.shared_plans: its model of the classifier's batches matches what `classify_image` really sends."""
from __future__ import annotations

import pytest
import torch

from bigain.diffusion import classifier
from eval.speed.shared_plans import batch_sizes_and_distinct


class RecordingModel:
    """Predicts zero noise and records, per call, the batch size and its number of distinct noisy inputs."""

    device = torch.device("cpu")
    alphas_cumprod = torch.linspace(0.999, 0.01, 1000)

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    @staticmethod
    def select(cond, rows):
        return {k: v[torch.as_tensor(rows)] for k, v in cond.items()}

    def predict_eps(self, x_t, t, cond):
        self.calls.append((x_t.shape[0], torch.unique(x_t.flatten(1), dim=0).shape[0]))
        return torch.zeros_like(x_t)


@pytest.mark.parametrize("n_samples,to_keep,batch_size,n_trials", [((5, 20), (5, 1), 32, 1), ((2, 4), (3, 1), 7, 2)])
def test_class_major_model_matches_the_classifier(n_samples, to_keep, batch_size, n_trials):
    schedule = classifier.StageSchedule(n_samples, to_keep, n_trials=n_trials)
    model, num_classes = RecordingModel(), 10
    noise = classifier.make_noise((1, 4, 4), schedule.num_slots, n_trials, seed=0)
    x0 = torch.rand(1, 1, 4, 4)
    classifier.classify_image(model, x0, {"class": torch.arange(num_classes)}, schedule, noise, batch_size=batch_size)
    assert model.calls == batch_sizes_and_distinct(schedule, num_classes, batch_size, "class-major")


def test_timestep_major_order_has_fewer_distinct_inputs_for_the_same_rows():
    schedule = classifier.StageSchedule()
    major = batch_sizes_and_distinct(schedule, 10, 32, "class-major")
    minor = batch_sizes_and_distinct(schedule, 10, 32, "timestep-major")
    assert sum(r for r, _ in major) == sum(r for r, _ in minor) == schedule.calls_per_image(10)
    assert sum(d for _, d in minor) < sum(d for _, d in major)
    assert all(d <= -(-r // 5) + 1 for r, d in minor)  # stage 2 keeps 5 classes: ~5 rows per distinct input
