from __future__ import annotations

import numpy as np
from PIL import Image

from tests.images import decompression_bomb, odd_but_valid, truncated_jpeg
from tlpipe.data.image_facts import inspect_image
from tlpipe.vectors.images import load_rgb


def test_every_odd_mode_becomes_8bit_rgb(tmp_path):
    for name, path in odd_but_valid(tmp_path).items():
        image = load_rgb(path)
        assert image.mode == "RGB", name
        info = inspect_image(path.read_bytes(), max_pixels=10**7)
        assert info.decodable, (name, info.error)


def test_exif_orientation_is_applied(tmp_path):
    files = odd_but_valid(tmp_path)
    assert Image.open(files["rotated.jpg"]).size == (96, 64)
    assert load_rgb(files["rotated.jpg"]).size == (64, 96)


def test_sixteen_bit_keeps_its_brightness(tmp_path):
    files = odd_but_valid(tmp_path)
    grey8 = np.asarray(load_rgb(files["grey.png"]), dtype=int)
    grey16 = np.asarray(load_rgb(files["sixteen.png"]), dtype=int)
    assert np.abs(grey8 - grey16).max() <= 1


def test_alpha_is_composited_on_white(tmp_path):
    transparent = Image.new("RGBA", (40, 40), (0, 0, 0, 0))
    transparent.save(tmp_path / "clear.png")
    assert load_rgb(tmp_path / "clear.png").getpixel((5, 5)) == (255, 255, 255)


def test_broken_files_are_not_decodable_and_say_why(tmp_path):
    (tmp_path / "zero.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("not an image at all")
    for path in (truncated_jpeg(tmp_path / "cut.jpg"), tmp_path / "zero.jpg",
                 tmp_path / "text.jpg"):
        info = inspect_image(path.read_bytes(), max_pixels=10**7)
        assert not info.decodable and info.error, path.name


def test_decompression_bomb_is_reported_from_its_header_without_decoding(tmp_path):
    bomb = decompression_bomb(tmp_path / "bomb.png")
    assert bomb.stat().st_size < 2_000_000
    info = inspect_image(bomb.read_bytes(), max_pixels=40_000_000)
    assert not info.decodable
    assert (info.width, info.height) == (20_000, 20_000)
    assert "not decoded" in info.error


def test_large_jpegs_decode_at_reduced_size_the_same_way_in_training_and_serving(tmp_path):
    """A 2400x1800 JPEG asked for a shorter side of 256 decodes at 1/4 scale (600x450), not
    below; EXIF rotation still applies; a PNG is never reduced; the served model's decoding
    of the same bytes gives the same pixels."""
    from tlpipe.serving.pyfunc import as_image

    gradient = np.linspace(0, 255, 2400, dtype=np.uint8)
    photo = Image.fromarray(np.stack([np.tile(gradient, (1800, 1))] * 3, axis=2))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees: width and height swap when applied
    photo.save(tmp_path / "photo.jpg", quality=90, exif=exif)
    photo.save(tmp_path / "photo.png")
    assert load_rgb(tmp_path / "photo.jpg").size == (1800, 2400)
    reduced = load_rgb(tmp_path / "photo.jpg", min_side=256)
    assert reduced.size == (450, 600)
    assert load_rgb(tmp_path / "photo.jpg", min_side=500).size == (900, 1200)
    assert load_rgb(tmp_path / "photo.png", min_side=256).size == (2400, 1800)
    served = as_image((tmp_path / "photo.jpg").read_bytes(), min_side=256)
    assert np.array_equal(np.asarray(served), np.asarray(reduced))
