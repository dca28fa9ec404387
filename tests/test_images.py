"""Every kind of image a person might hand us, and every kind of bad file, through load_image."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from maskseg.errors import ImageLoadError
from maskseg.engine.images import load_image


def _png_bytes(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _gradient(width: int = 40, height: int = 30) -> np.ndarray:
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None].repeat(width, 1)
    return np.stack([x, y, 255 - x], axis=2).astype(np.uint8)


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA", "CMYK", "1", "RGB"])
def test_every_pillow_mode_becomes_rgb_of_the_same_size(mode: str) -> None:
    source = Image.fromarray(_gradient()).convert(mode)
    loaded = load_image(_png_bytes(source, "TIFF" if mode == "CMYK" else "PNG"), name=f"x.{mode}")
    assert loaded.pixels.shape == (30, 40, 3)
    assert loaded.pixels.dtype == np.uint8


def test_grayscale_keeps_its_brightness() -> None:
    gray = Image.fromarray(np.full((10, 12), 200, dtype=np.uint8), "L")
    pixels = load_image(_png_bytes(gray)).pixels
    assert (pixels == 200).all()


def test_sixteen_bit_grayscale_is_scaled_not_clipped() -> None:
    values = np.array([[0, 32768, 65535]], dtype=np.uint16).repeat(4, 0)
    image = Image.fromarray(values)  # mode I;16
    pixels = load_image(_png_bytes(image), name="depth.png").pixels
    assert pixels[0, :, 0].tolist() == [0, 128, 255]


def test_transparent_areas_become_white_not_black() -> None:
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[:4, :, :] = (255, 0, 0, 255)  # opaque red top half, fully transparent bottom half
    pixels = load_image(_png_bytes(Image.fromarray(rgba, "RGBA"))).pixels
    assert pixels[0, 0].tolist() == [255, 0, 0]
    assert pixels[7, 7].tolist() == [255, 255, 255]


def test_exif_orientation_is_applied() -> None:
    image = Image.fromarray(_gradient(40, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    loaded = load_image(_png_bytes(image, "JPEG", exif=exif.tobytes()), name="phone.jpg")
    assert loaded.pixels.shape == (40, 30, 3)  # portrait, as the camera meant it
    # The left column (x=0: red 0, blue 255) is now the top row.
    assert loaded.pixels[0, :, 2].mean() > 200


def test_animated_gif_gives_its_first_frame() -> None:
    frames = [Image.new("RGB", (16, 16), color) for color in ((255, 0, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    pixels = load_image(buffer.getvalue(), name="anim.gif").pixels
    assert pixels[8, 8, 0] > 200 and pixels[8, 8, 2] < 50


def test_paths_pil_images_and_arrays_are_all_accepted(tmp_path) -> None:
    array = _gradient()
    path = tmp_path / "photo.png"
    Image.fromarray(array).save(path)
    from_path = load_image(path)
    assert from_path.name == "photo.png"
    assert np.array_equal(from_path.pixels, array)
    assert np.array_equal(load_image(Image.fromarray(array)).pixels, array)
    assert np.array_equal(load_image(array).pixels, array)
    assert load_image(array[:, :, 0]).pixels.shape == (30, 40, 3)
    floats = array.astype(np.float32) / 255.0
    assert np.abs(load_image(floats).pixels.astype(int) - array).max() <= 1


def test_not_an_image_names_the_file(tmp_path) -> None:
    path = tmp_path / "notes.jpg"
    path.write_text("this is not a picture")
    with pytest.raises(ImageLoadError, match="notes.jpg is not an image"):
        load_image(path)


def test_empty_file_names_the_file(tmp_path) -> None:
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(ImageLoadError, match="empty.png is empty"):
        load_image(path)


def test_truncated_file_names_the_file(tmp_path) -> None:
    data = _png_bytes(Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8)), "JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageLoadError, match="cut.jpg is damaged or truncated"):
        load_image(path)


def test_missing_file_is_named(tmp_path) -> None:
    with pytest.raises(ImageLoadError, match="nothere.jpg does not exist"):
        load_image(tmp_path / "nothere.jpg")


def test_decompression_bomb_is_refused_before_decoding(tmp_path) -> None:
    # 7000×6000 = 42 MP, over the default 40 MP limit; the PNG is tiny because it is all black.
    path = tmp_path / "bomb.png"
    Image.new("L", (7000, 6000)).save(path)
    with pytest.raises(ImageLoadError, match=r"bomb.png is 7000×6000 \(42.0 megapixels\), over the 40-megapixel limit"):
        load_image(path)
    # The limit is configurable.
    with pytest.raises(ImageLoadError, match="over the 1-megapixel limit"):
        load_image(_png_bytes(Image.new("RGB", (1200, 1000))), name="big.png", max_pixels=1_000_000)


def _zip_of(path, members: dict[str, bytes]):
    import zipfile

    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def test_zips_expand_into_their_images_and_name_every_other_file(tmp_path) -> None:
    from maskseg.engine.sources import collect_batch_images

    red = _png_bytes(Image.new("RGB", (12, 10), (255, 0, 0)))
    blue = _png_bytes(Image.new("RGB", (8, 6), (0, 0, 255)))
    photos = _zip_of(tmp_path / "photos.zip", {
        "a/red.png": red, "b/blue.png": blue, "b/notes.txt": b"not a photo", "__MACOSX/b/._blue.png": b"junk",
    })
    loose = tmp_path / "loose.png"
    loose.write_bytes(red)
    text = tmp_path / "readme.txt"
    text.write_text("hello")
    collected = collect_batch_images([loose, photos, text], max_pixels=1_000_000)
    assert [(i.name, i.pixels.shape) for i in collected.images] == [
        ("loose.png", (10, 12, 3)), ("red.png", (10, 12, 3)), ("blue.png", (6, 8, 3))
    ]
    assert collected.images[2].pixels[0, 0].tolist() == [0, 0, 255]
    assert [name for name, _ in collected.skipped] == ["photos.zip/b/notes.txt", "readme.txt"]
    assert "notes.txt is not an image file Pillow can read" in collected.skipped[0][1]


def test_damaged_and_oversized_zip_members_are_named_not_raised(tmp_path) -> None:
    from maskseg.engine.sources import expand_sources, read_sources

    red = _png_bytes(Image.new("RGB", (12, 10), (255, 0, 0)))
    damaged = bytearray(_zip_of(tmp_path / "d.zip", {"good.png": red, "bad.png": red}).read_bytes())
    second = damaged.rindex(red[:32])  # the stored bytes of bad.png: break its CRC
    damaged[second + 40] ^= 0xFF
    (tmp_path / "d.zip").write_bytes(bytes(damaged))
    sources, refused = expand_sources([tmp_path / "d.zip"], max_members=1)
    assert [s.short_name for s in sources] == ["d.zip/good.png"]
    assert refused[0][1] == "d.zip holds 2 files; at most 1 are read."
    sources, refused = expand_sources([tmp_path / "d.zip"])
    results = [(s.short_name, image is not None, reason) for s, image, reason in read_sources(sources, 1_000_000)]
    assert results[0] == ("d.zip/good.png", True, "")
    assert results[1][:2] == ("d.zip/bad.png", False) and "bad.png could not be unpacked" in results[1][2]


def test_sources_are_listed_without_decoding_and_read_one_at_a_time(tmp_path, monkeypatch) -> None:
    """A big zip is never decoded up front: the command line streams it image by image."""
    from maskseg.engine import sources as sources_module

    red = _png_bytes(Image.new("RGB", (12, 10), (255, 0, 0)))
    archive = _zip_of(tmp_path / "many.zip", {f"{k:03d}.png": red for k in range(20)})
    decoded = []
    real_load = sources_module.load_image
    monkeypatch.setattr(sources_module, "load_image", lambda *a, **k: decoded.append(1) or real_load(*a, **k))
    listed, refused = sources_module.expand_sources([archive], walk_folders=True, max_members=None)
    assert len(listed) == 20 and not refused and not decoded
    stream = sources_module.read_sources(listed, 1_000_000)
    first = next(stream)
    assert first[1].name == "000.png" and len(decoded) == 1
    assert len(list(stream)) == 19
