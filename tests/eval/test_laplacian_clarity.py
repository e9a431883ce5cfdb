"""eval.laplacian_clarity: flat, clear and agreement shares on images whose answers are known."""
import numpy as np
import pytest
import torch

from eval import laplacian_clarity as lc


def test_flat_image_has_only_flat_blocks_and_every_pick_agrees_in_value():
    stats = lc.block_statistics(torch.zeros(3, 1, 32, 32), patch=2, clear_gap=0.5)
    assert np.allclose(stats["flat"], 1.0) and np.allclose(stats["same_value"], 1.0)
    assert np.allclose(stats["clear"], 0.0)


def test_random_noise_has_no_flat_block_and_agreement_near_a_quarter():
    images = torch.rand(20, 1, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    stats = lc.block_statistics(images, patch=1, clear_gap=0.0)
    assert stats["flat"].max() == 0.0
    assert abs(stats["same_index"].mean() - 0.25) < 0.03
    assert np.allclose(stats["same_index"], stats["same_value"])  # distinct tokens: same value iff same index


def test_block_scores_groups_the_four_tokens_of_each_block():
    scores = torch.arange(16.0).view(1, 16)  # 4x4 grid, row-major
    blocks = lc.block_scores(scores, 4, 4)
    assert blocks[0, 0].tolist() == [0, 1, 4, 5] and blocks[0, 3].tolist() == [10, 11, 14, 15]


def test_table_markdown_csv_and_plot(tmp_path):
    pytest.importorskip("skimage")
    table = lc.main(["--datasets", "textures", "--output_dir", str(tmp_path)])
    assert list(table.grid) == ["dit", "unet"] and (table.images == 1000).all()
    assert (table.flat_low <= table.flat_pct).all() and (table.flat_pct <= table.flat_high).all()
    assert {p.name for p in tmp_path.iterdir()} >= {"clarity.csv", "clarity.md", "clarity.png"}


def test_bad_gap_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        lc.main(["--clear_gap", "0"])
    assert exit_info.value.code == 2 and "error: --clear_gap must be positive" in capsys.readouterr().err
