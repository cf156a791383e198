import pytest
import torch

from pointrend_sem.modeling import (
    calculate_uncertainty,
    sample_training_points,
    select_uncertain_grid_points,
)
from pointrend_sem.modeling.point_sampling import two_highest


def vertical_boundary_logits(n=2, h=16, w=16, num_classes=3):
    """Class 0 on the left half, class 1 on the right, a sharp boundary at x = 0.5."""
    logits = torch.zeros(n, num_classes, h, w)
    logits[:, 0, :, : w // 2] = 5.0
    logits[:, 1, :, w // 2 :] = 5.0
    return logits


def test_uncertainty_is_minus_top2_margin():
    logits = torch.tensor([[[3.0], [1.0], [-2.0]]])  # (1, 3, 1)
    assert calculate_uncertainty(logits).tolist() == [[[-2.0]]]


@pytest.mark.parametrize("shape", [(2, 2, 5, 7), (1, 19, 33, 65), (3, 7, 101)])
def test_two_highest_equals_topk_ties_included(shape):
    generator = torch.Generator().manual_seed(0)
    logits = torch.randint(-3, 4, shape, generator=generator).float()  # many ties
    logits[0, :, 0] = 2.0  # all classes tied at one position
    first, second = two_highest(logits)
    expected = torch.topk(logits, k=2, dim=1).values
    assert torch.equal(first, expected[:, 0]) and torch.equal(second, expected[:, 1])
    assert torch.equal(calculate_uncertainty(logits), (expected[:, 1] - expected[:, 0])[:, None])
    assert calculate_uncertainty(logits)[0, 0, 0].eq(0).all()


def test_uncertainty_single_class_uses_distance_to_zero():
    logits = torch.tensor([[[2.0, -0.5, 0.0]]])  # (1, 1, 3)
    assert calculate_uncertainty(logits).tolist() == [[[-2.0, -0.5, 0.0]]]


def test_training_points_count_and_range():
    coords = sample_training_points(vertical_boundary_logits(), 500, 3, 0.75)
    assert coords.shape == (2, 500, 2)
    assert coords.min() >= 0 and coords.max() <= 1


def uncertain_band_logits():
    """(1, 3, 12, 12) logits, confident (margin 10) except in the band of columns 4..7,
    |x - 0.5| < 1/6 (a third of the image), where the top-2 margin is 0."""
    logits = torch.zeros(1, 3, 12, 12)
    logits[:, 0] = 10.0
    logits[:, 0, :, 4:8] = 0.0
    return logits


def test_importance_sampled_points_come_from_the_uncertain_region():
    n_points, beta = 1200, 0.75
    coords = sample_training_points(uncertain_band_logits(), n_points, 3, beta)
    in_band = (coords[0, :, 0] - 0.5).abs() < 1 / 6
    # ~1/3 of the 3N candidates lie in the band, more than the beta * N most uncertain needed:
    # all importance points are there, plus about a third of the uniform ones.
    assert in_band[: int(beta * n_points)].all()
    assert in_band.sum() >= beta * n_points + 0.2 * (1 - beta) * n_points
    uniform = sample_training_points(uncertain_band_logits(), n_points, 3, 0.0)
    assert ((uniform[0, :, 0] - 0.5).abs() < 1 / 6).float().mean() < 0.4


def test_training_points_are_seeded():
    logits = vertical_boundary_logits()
    torch.manual_seed(3)
    a = sample_training_points(logits, 100, 3, 0.75)
    torch.manual_seed(3)
    b = sample_training_points(logits, 100, 3, 0.75)
    c = sample_training_points(logits, 100, 3, 0.75)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_grid_points_more_than_pixels_returns_every_cell():
    logits = torch.randn(2, 4, 5, 7)
    indices, coords = select_uncertain_grid_points(logits, 10_000)
    assert indices.shape == (2, 35)
    assert all(len(set(row.tolist())) == 35 for row in indices)
    # cell centres: x = (col + 0.5) / W, y = (row + 0.5) / H
    cols, rows = indices % 7, indices // 7
    assert torch.allclose(coords[..., 0], (cols.float() + 0.5) / 7)
    assert torch.allclose(coords[..., 1], (rows.float() + 0.5) / 5)


def test_grid_points_pick_the_most_uncertain_cells():
    indices, _ = select_uncertain_grid_points(uncertain_band_logits(), 48)
    assert set((indices[0] % 12).tolist()) == {4, 5, 6, 7}  # exactly the 48 band cells


@pytest.mark.parametrize("num_points", [5, 1000])
def test_grid_points_stay_inside_each_image(num_points):
    logits = torch.zeros(2, 3, 8, 8)
    logits[:, 0] = torch.rand(2, 8, 8)  # uncertainty everywhere, highest in padding for image 1
    logits[1, 0, 4:, :] = 0.0
    valid = torch.tensor([[1.0, 1.0], [0.5, 0.25]])  # image 1 covers the top-left 4x2 cells
    _, coords = select_uncertain_grid_points(logits, num_points, valid)
    inside = (coords[1, :, 1] < 0.5) & (coords[1, :, 0] < 0.25)
    assert inside[: min(num_points, 8)].all()
