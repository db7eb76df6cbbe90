"""Composing several subjects into one white reference image (multi-subject / virtual try-on)."""

from __future__ import annotations

import pytest
import torch

from hunyuancustom.compose import Subject, compose_from_inputs, compose_subjects, grid_shape
from hunyuancustom.errors import ValidationError

RED, BLUE, GREEN = (1.0, 0.0, 0.0), (0.0, 0.0, 1.0), (0.0, 1.0, 0.0)


def solid(h, w, rgb, batch=True):
    img = torch.tensor(rgb, dtype=torch.float32).expand(h, w, 3).clone()
    return img.unsqueeze(0) if batch else img


def is_white(x):
    return bool((x > 0.99).all())


def colour_box(canvas, rgb, tol=0.05):
    """Bounding box (y0, y1, x0, x1) of the pixels close to `rgb`."""
    target = torch.tensor(rgb)
    hit = ((canvas - target).abs() < tol).all(-1)
    ys, xs = torch.nonzero(hit, as_tuple=True)
    assert ys.numel(), f"no pixel of colour {rgb}"
    return int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1


def test_row_puts_each_subject_in_its_own_half_on_white():
    out = compose_from_inputs([solid(100, 50, RED), solid(40, 80, BLUE), None, None], [None] * 4,
                              width=256, height=128, layout="row", padding=8)
    assert out.shape == (1, 128, 256, 3)
    canvas = out[0]
    ry0, ry1, rx0, rx1 = colour_box(canvas, RED)
    by0, by1, bx0, bx1 = colour_box(canvas, BLUE)
    assert rx1 <= 128 <= bx0  # left cell / right cell
    # Each fills its cell's box (112 x 112) on the limiting side, aspect kept.
    assert ry1 - ry0 == 112 and abs((rx1 - rx0) - 56) <= 1
    assert bx1 - bx0 == 112 and abs((by1 - by0) - 56) <= 1
    # Centred in the cell; the rest is white.
    assert abs((rx0 + rx1) / 2 - 64) <= 1 and abs((bx0 + bx1) / 2 - 192) <= 1
    assert is_white(canvas[:8]) and is_white(canvas[:, :8]) and is_white(canvas[:, 128 + 64 + 57:])


def test_column_and_grid_layouts_place_cells_as_named():
    assert grid_shape(1, "grid") == (1, 1) and grid_shape(3, "grid") == (2, 2)
    assert grid_shape(4, "grid") == (2, 2) and grid_shape(2, "column") == (2, 1)
    col = compose_subjects([Subject(solid(10, 10, RED, False)), Subject(solid(10, 10, BLUE, False))],
                           width=64, height=128, layout="column", padding=0)
    assert colour_box(col, RED)[1] <= 64 <= colour_box(col, BLUE)[0]
    grid = compose_subjects([Subject(solid(10, 10, c, False)) for c in (RED, BLUE, GREEN)],
                            width=128, height=128, layout="grid", padding=4)
    (r, b, g) = (colour_box(grid, c) for c in (RED, BLUE, GREEN))
    assert r[3] <= 64 <= b[2] and r[1] <= 64 and b[1] <= 64  # top row: red, blue
    assert g[0] >= 64 and g[3] <= 64  # bottom-left: green
    assert is_white(grid[64:, 64:])  # the fourth cell stays empty


def test_mask_cuts_the_subject_out_onto_white_and_crops_to_it():
    img = solid(60, 60, BLUE)
    img[0, 20:40, 10:30] = torch.tensor(RED)  # the "person" inside a blue background
    mask = torch.zeros(1, 60, 60)
    mask[0, 20:40, 10:30] = 1.0
    out = compose_from_inputs([img, None, None, None], [mask, None, None, None],
                              width=64, height=64, layout="row", padding=0)[0]
    # No blue left: the background became white; the red square was cropped and scaled to fill.
    assert not ((out - torch.tensor(BLUE)).abs() < 0.1).all(-1).any()
    y0, y1, x0, x1 = colour_box(out, RED)
    assert (y1 - y0, x1 - x0) == (64, 64)


def test_inverted_mask_and_alpha_channel_select_the_opaque_part():
    # LoadImage's MASK is 1 where the PNG is transparent.
    rgba = torch.ones(1, 32, 32, 4)
    rgba[..., :3] = torch.tensor(GREEN)
    rgba[0, :, 16:, 3] = 0.0  # right half transparent
    loadimage_mask = 1.0 - rgba[..., 3]
    by_mask = compose_from_inputs([rgba[..., :3], None, None, None], [loadimage_mask, None, None, None],
                                  invert_masks=True, width=64, height=64, padding=0)[0]
    by_alpha = compose_from_inputs([rgba, None, None, None], [None] * 4, width=64, height=64,
                                   padding=0)[0]
    for out in (by_mask, by_alpha):
        y0, y1, x0, x1 = colour_box(out, GREEN)
        assert (y1 - y0, x1 - x0) == (64, 32)  # the 32x16 opaque half, scaled x2
        assert is_white(out[:, :16]) and is_white(out[:, 48:])


def test_output_size_is_the_canvas_and_a_multiple_of_16():
    out = compose_from_inputs([solid(33, 17, RED), solid(5, 7, BLUE), solid(9, 9, GREEN), None],
                              [None] * 4, width=720, height=1280, layout="grid", padding=0)
    assert out.shape == (1, 1280, 720, 3) and out.dtype == torch.float32
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


@pytest.mark.parametrize(
    ("images", "masks", "kwargs", "field", "text"),
    [
        ([solid(8, 8, RED).repeat(2, 1, 1, 1), None, None, None], [None] * 4, {}, "image_1", "batch of 2"),
        ([solid(8, 8, RED), None, None, None], [None, torch.ones(1, 8, 8), None, None], {}, "mask_2",
         "image_2 is not"),
        ([solid(8, 8, RED), None, None, None], [torch.ones(1, 64, 64), None, None, None], {}, "mask_1",
         "must have the image's size"),
        ([solid(8, 8, RED), None, None, None], [torch.zeros(1, 8, 8), None, None, None], {}, "mask_1",
         "invert_masks"),
        ([solid(8, 8, RED), None, None, None], [None] * 4, {"width": 100}, "width", "multiples of 16"),
        ([solid(8, 8, RED), None, None, None], [None] * 4, {"layout": "circle"}, "layout", "row"),
        ([solid(8, 8, RED), solid(8, 8, RED), None, None], [None] * 4,
         {"width": 64, "height": 64, "padding": 30}, "padding", "no room"),
        (["not an image", None, None, None], [None] * 4, {}, "image_1", "IMAGE tensor"),
    ],
)
def test_bad_input_names_the_field(images, masks, kwargs, field, text):
    canvas = {"width": 128, "height": 128, "layout": "row", "padding": 0, **kwargs}
    with pytest.raises(ValidationError) as e:
        compose_from_inputs(images, masks, **canvas)
    assert e.value.field == field and text in str(e.value)


def test_no_subject_at_all_is_refused():
    with pytest.raises(ValidationError, match="image_1"):
        compose_from_inputs([None] * 4, [None] * 4, width=64, height=64)
