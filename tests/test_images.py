"""Tests for cloostcodec.images: reading pictures, MNIST fitting, writing."""

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cloostcodec.images import (
    ImageError,
    encode_image,
    fit_mnist,
    open_image,
    prepare,
    to_grayscale,
    to_image,
)


# ---------------------------------------------------------------- helpers

def png_bytes(image):
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def mnist_like_digit():
    """A 28x28 light-on-dark '7'-ish digit with soft edges, centred like MNIST."""
    img = np.zeros((28, 28), dtype=np.float64)
    img[4:7, 7:21] = 1.0  # top bar
    for r in range(7, 23):  # diagonal stroke; with the soft edge: rows 4..23
        c = 19 - (r - 7) // 2
        img[r, c - 1:c + 2] = 1.0
    # centre the mass like MNIST does (the digit stays inside the canvas)
    cy, cx = centre_of_mass(img)
    img = np.roll(img, (int(round(13.5 - cy)), int(round(13.5 - cx))), axis=(0, 1))
    soft = img.copy()
    soft[1:, :] = np.maximum(soft[1:, :], 0.4 * img[:-1, :])
    soft[:, 1:] = np.maximum(soft[:, 1:], 0.4 * img[:, :-1])
    return np.rint(soft * 255).astype(np.uint8)


def centre_of_mass(a):
    a = a.astype(np.float64)
    total = a.sum()
    ys, xs = np.indices(a.shape)
    return (ys * a).sum() / total, (xs * a).sum() / total


def bbox(a, level=0):
    rows = np.flatnonzero((a > level).any(axis=1))
    cols = np.flatnonzero((a > level).any(axis=0))
    return rows[0], rows[-1], cols[0], cols[-1]


# ---------------------------------------------------------------- grayscale modes

def test_mode_L_passthrough():
    a = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    out = to_grayscale(Image.fromarray(a, mode="L"))
    assert out.dtype == np.uint8 and out.shape == (3, 4)
    np.testing.assert_array_equal(out, a)


def test_mode_1_bilevel():
    img = Image.new("1", (3, 2), 0)
    img.putpixel((1, 0), 1)
    out = to_grayscale(img)
    assert out.tolist() == [[0, 255, 0], [0, 0, 0]]


def test_rgba_black_ink_on_transparent_reads_as_dark_on_white():
    # A typical "digit drawn in an editor" export: black strokes, the rest
    # fully transparent (and the transparent pixels' colour is black too).
    a = np.zeros((10, 10, 4), dtype=np.uint8)
    a[2:8, 4:6] = (0, 0, 0, 255)
    out = to_grayscale(Image.fromarray(a, mode="RGBA"))
    assert out[0, 0] == 255  # transparent -> white paper
    assert out[5, 4] == 0  # opaque black ink stays black
    half = np.zeros((1, 1, 4), dtype=np.uint8)
    half[0, 0] = (0, 0, 0, 128)  # half-transparent black over white -> mid grey
    assert abs(int(to_grayscale(Image.fromarray(half, mode="RGBA"))[0, 0]) - 127) <= 1


def test_la_alpha_composited_over_white():
    img = Image.new("LA", (2, 1), (0, 0))
    img.putpixel((1, 0), (30, 255))
    assert to_grayscale(img).tolist() == [[255, 30]]


def test_palette_without_and_with_transparency():
    pal = Image.new("P", (3, 1))
    pal.putpalette([0, 0, 0, 255, 255, 255, 255, 0, 0] + [0] * (256 * 3 - 9))
    pal.putdata([0, 1, 2])
    out = to_grayscale(pal)
    assert out[0, 0] == 0 and out[0, 1] == 255
    assert out[0, 2] == 76  # pure red: ITU-R 601 luma 0.299 * 255
    pal.info["transparency"] = 0  # index 0 (black) is transparent
    out = to_grayscale(pal)
    assert out[0, 0] == 255 and out[0, 1] == 255
    # the same through a PNG file (tRNS chunk)
    reread = open_image(png_bytes(pal))
    assert reread.mode == "P"
    assert to_grayscale(reread).tolist() == out.tolist()


def test_rgb_luma():
    a = np.array([[[255, 255, 255], [0, 0, 0], [0, 255, 0]]], dtype=np.uint8)
    assert to_grayscale(Image.fromarray(a, mode="RGB")).tolist() == [[255, 0, 150]]


def test_cmyk():
    img = Image.new("CMYK", (3, 1), (0, 0, 0, 0))  # no ink = white
    img.putpixel((1, 0), (0, 0, 0, 255))  # full black
    img.putpixel((2, 0), (0, 0, 0, 128))  # half black
    out = to_grayscale(img)
    assert out[0, 0] == 255 and out[0, 1] == 0
    assert 120 <= out[0, 2] <= 135


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I;16L"])
def test_16_bit_scaled_by_bit_depth(mode):
    img = Image.new(mode, (3, 1), 0)
    img.putpixel((1, 0), 65535)
    img.putpixel((2, 0), 32896)  # 128 * 257
    assert to_grayscale(img).tolist() == [[0, 255, 128]]


def test_16_bit_png_file():
    a = np.array([[0, 65535], [257 * 100, 65535]], dtype=np.uint16)
    reread = open_image(png_bytes(Image.fromarray(a)))
    assert to_grayscale(reread).tolist() == [[0, 255], [100, 255]]


def test_mode_I_32_bit():
    sixteen = Image.new("I", (2, 1), 0)
    sixteen.putpixel((1, 0), 65535)  # 16-bit data in a 32-bit container
    assert to_grayscale(sixteen).tolist() == [[0, 255]]
    eight = Image.new("L", (2, 1), 0)
    eight.putpixel((1, 0), 200)
    assert to_grayscale(eight.convert("I")).tolist() == [[0, 200]]


def test_mode_F():
    unit = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32), mode="F")
    assert to_grayscale(unit).tolist() == [[0, 128, 255]]
    bytescale = Image.fromarray(np.array([[0.0, 100.0, 300.0]], dtype=np.float32), mode="F")
    assert to_grayscale(bytescale).tolist() == [[0, 100, 255]]


# ---------------------------------------------------------------- open_image sources

def test_numpy_sources():
    assert open_image(np.zeros((4, 5), dtype=np.uint8)).size == (5, 4)
    rgb = open_image(np.full((2, 2, 3), 255, dtype=np.uint8))
    assert rgb.mode == "RGB"
    assert open_image(np.zeros((2, 2, 4), dtype=np.uint8)).mode == "RGBA"
    assert to_grayscale(open_image(np.array([[True, False]]))).tolist() == [[255, 0]]
    assert to_grayscale(open_image(np.array([[0, 65535]], dtype=np.uint16))).tolist() == [[0, 255]]
    assert to_grayscale(open_image(np.array([[0.0, 1.0]], dtype=np.float32))).tolist() == [[0, 255]]
    with pytest.raises(ImageError, match=r"\[0, 1\]"):
        open_image(np.array([[0.0, 2.0]]))
    with pytest.raises(ImageError, match="dtype int64"):
        open_image(np.array([[0, 255]], dtype=np.int64))
    with pytest.raises(ImageError, match="shape"):
        open_image(np.zeros((2, 2, 2, 2), dtype=np.uint8))


def test_path_bytes_filelike_and_pil_sources(tmp_path):
    a = mnist_like_digit()
    data = png_bytes(Image.fromarray(a))
    path = tmp_path / "digit.png"
    path.write_bytes(data)
    for source in (path, str(path), data, io.BytesIO(data), Image.fromarray(a)):
        np.testing.assert_array_equal(to_grayscale(open_image(source)), a)
    with open(path, "rb") as handle:
        img = open_image(handle)
    assert img.size == (28, 28) and np.asarray(img).sum() == a.sum()  # loaded after close


def test_error_missing_file(tmp_path):
    missing = tmp_path / "missing.png"
    with pytest.raises(ImageError) as info:
        open_image(missing)
    assert str(info.value) == f"{missing}: no such file"


def test_error_folder(tmp_path):
    with pytest.raises(ImageError) as info:
        open_image(tmp_path)
    assert str(info.value) == f"{tmp_path}: is a folder, not an image"


def test_error_not_an_image(tmp_path):
    text = tmp_path / "digit.txt"
    text.write_text("this is a seven\n")
    with pytest.raises(ImageError) as info:
        open_image(text)
    assert str(info.value) == f"{text}: not an image (cannot identify image file)"
    with pytest.raises(ImageError, match=r"^image: not an image"):
        open_image(b"not a picture at all")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageError, match="empty file"):
        open_image(empty)


def test_error_truncated_png(tmp_path):
    rng = np.random.default_rng(0)
    noisy = rng.integers(0, 256, size=(64, 64), dtype=np.uint8)  # does not compress
    data = png_bytes(Image.fromarray(noisy))
    cut = tmp_path / "cut.png"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError) as info:
        open_image(cut)
    message = str(info.value)
    assert message.startswith(f"{cut}: truncated or corrupt image (")
    assert "\n" not in message


def test_error_messages_are_one_line_value_errors(tmp_path):
    with pytest.raises(ValueError):
        open_image(tmp_path / "nope.png")
    with pytest.raises(ImageError):
        open_image(12345)


# ---------------------------------------------------------------- prepare

def test_prepare_exact_size_passes_and_converts_mode_silently(tmp_path):
    a = mnist_like_digit()
    rgba = np.dstack([a, a, a, np.full_like(a, 255)])
    out = prepare(rgba)
    assert out.dtype == np.uint8 and out.shape == (28, 28)
    np.testing.assert_array_equal(out, a)
    sixteen = Image.fromarray(a.astype(np.uint16) * 257)
    np.testing.assert_array_equal(prepare(sixteen), a)


def test_prepare_wrong_size_names_both_sizes_and_fit(tmp_path):
    photo = tmp_path / "photo.png"
    Image.new("RGB", (640, 480), "white").save(photo)
    with pytest.raises(ImageError) as info:
        prepare(photo, model_name="mnist-30b")
    assert str(info.value) == (
        f"{photo} is 640x480; mnist-30b expects 28x28 grayscale images "
        "(use --fit to convert an arbitrary digit picture)"
    )
    with pytest.raises(ImageError) as info:
        prepare(np.zeros((32, 30), dtype=np.uint8), height=16, width=20)
    message = str(info.value)
    assert message.startswith("image is 30x32; the model expects 20x16 ")
    assert "--fit" in message


def test_prepare_with_fit_accepts_any_size(tmp_path):
    photo = tmp_path / "photo.png"
    a = np.full((480, 640), 255, dtype=np.uint8)
    a[100:300, 300:340] = 0
    Image.fromarray(a).save(photo)
    out = prepare(photo, fit=True)
    assert out.shape == (28, 28) and out.max() == 255 and out[0, 0] == 0


# ---------------------------------------------------------------- fit_mnist

def test_fit_large_white_picture_with_dark_bar_in_corner():
    picture = np.full((300, 200), 255, dtype=np.uint8)  # 200 wide, 300 tall
    picture[20:140, 15:45] = 0  # a thick '1' near the top-left corner
    out = fit_mnist(picture)
    assert out.shape == (28, 28) and out.dtype == np.uint8
    assert out[0, 0] == 0 and out[-1, -1] == 0  # dark background
    assert out.max() == 255  # strongest ink
    top, bottom, left, right = bbox(out)
    height, width = bottom - top + 1, right - left + 1
    assert max(height, width) == 20 and height == 20
    assert 4 <= width <= 6  # 30/120 * 20 = 5, plus antialiased edges
    assert 4 <= top and bottom <= 23 and 4 <= left and right <= 23  # inside a 20x20 box
    cy, cx = centre_of_mass(out)
    assert abs(cy - 14) <= 1 and abs(cx - 14) <= 1


def test_fit_grey_paper_with_noise():
    rng = np.random.default_rng(1)
    picture = rng.normal(170, 6, size=(120, 160))  # grey paper, sensor/JPEG noise
    picture[30:90, 70:82] -= 120  # dark pencil stroke
    picture[30:38, 60:100] -= 120
    picture = np.clip(picture, 0, 255).astype(np.uint8)
    out = fit_mnist(picture)
    assert out.max() == 255
    top, bottom, left, right = bbox(out)
    assert max(bottom - top + 1, right - left + 1) == 20
    # background noise is gone outside the digit
    mask = np.zeros_like(out, dtype=bool)
    mask[top:bottom + 1, left:right + 1] = True
    assert out[~mask].max() == 0
    cy, cx = centre_of_mass(out)
    assert abs(cy - 14) <= 1 and abs(cx - 14) <= 1


def test_fit_jpeg_photo_of_a_digit():
    picture = np.full((240, 180), 235, dtype=np.uint8)  # off-white paper
    picture[40:200, 80:96] = 25  # dark pen stroke
    picture[40:52, 50:96] = 25
    buf = io.BytesIO()
    Image.fromarray(picture).save(buf, format="JPEG", quality=60)
    out = prepare(buf.getvalue(), fit=True)
    top, bottom, left, right = bbox(out)
    assert bottom - top + 1 == 20 and right - left + 1 <= 10
    mask = np.zeros_like(out, dtype=bool)
    mask[top:bottom + 1, left:right + 1] = True
    assert out[~mask].max() == 0 and out.max() == 255
    cy, cx = centre_of_mass(out)
    assert abs(cy - 14) <= 1 and abs(cx - 14) <= 1


def test_fit_light_ink_on_dark_is_not_inverted():
    picture = np.full((100, 100), 30, dtype=np.uint8)
    picture[10:60, 40:50] = 220
    out = fit_mnist(picture)
    top, bottom, left, right = bbox(out)
    assert bottom - top + 1 == 20
    assert out[0, 0] == 0 and out[14, 14] == 255


def test_fit_already_mnist_like_digit_is_roughly_unchanged():
    a = mnist_like_digit()
    out = fit_mnist(a)
    assert out.shape == (28, 28)
    before, after = centre_of_mass(a), centre_of_mass(out)
    assert abs(before[0] - after[0]) <= 1.5 and abs(before[1] - after[1]) <= 1.5
    b0, b1 = bbox(a, 100), bbox(out, 100)
    assert all(abs(int(x) - int(y)) <= 2 for x, y in zip(b0, b1))
    # the strokes overlap the original ones almost entirely
    ink_before, ink_after = a > 128, out > 128
    overlap = (ink_before & ink_after).sum() / ink_before.sum()
    assert overlap > 0.75
    # no halo: pixels far from any stroke stay black
    near = np.zeros_like(ink_before)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            near |= np.roll(a > 0, (dy, dx), axis=(0, 1))
    assert out[~near].max() == 0


def test_fit_empty_pictures_give_zeros():
    for picture in (
        np.full((50, 40), 255, dtype=np.uint8),
        np.zeros((28, 28), dtype=np.uint8),
        np.full((10, 10), 128, dtype=np.uint8),
        np.zeros((0, 0), dtype=np.uint8),
    ):
        out = fit_mnist(picture)
        assert out.shape == (28, 28) and out.dtype == np.uint8 and not out.any()
    rng = np.random.default_rng(2)
    faint_noise = np.clip(rng.normal(240, 3, size=(60, 60)), 0, 255).astype(np.uint8)
    assert not fit_mnist(faint_noise).any()


def test_fit_ignores_isolated_specks():
    picture = np.full((200, 200), 255, dtype=np.uint8)
    picture[60:160, 90:110] = 0
    picture[5, 5] = 0  # a dust speck far away
    picture[190, 180] = 0
    out = fit_mnist(picture)
    top, bottom, left, right = bbox(out)
    assert bottom - top + 1 == 20 and right - left + 1 <= 6


def test_fit_other_target_size_and_wide_digit():
    picture = np.full((100, 300), 255, dtype=np.uint8)
    picture[40:60, 20:280] = 0  # a wide dash
    out = fit_mnist(picture, height=56, width=56)
    assert out.shape == (56, 56)
    top, bottom, left, right = bbox(out)
    assert right - left + 1 == 40  # round(20/28 * 56)
    cy, cx = centre_of_mass(out)
    assert abs(cy - 28) <= 1 and abs(cx - 28) <= 1


# ---------------------------------------------------------------- output

def test_to_image_uint8_float_and_scale():
    a = mnist_like_digit()
    img = to_image(a)
    assert img.mode == "L" and img.size == (28, 28)
    np.testing.assert_array_equal(np.asarray(img), a)
    big = to_image(a, scale=4)
    assert big.size == (112, 112)
    np.testing.assert_array_equal(np.asarray(big)[::4, ::4], a)
    np.testing.assert_array_equal(np.asarray(big)[3::4, 3::4], a)
    floats = to_image(np.array([[0.0, 0.5, 1.0, 1.7, -0.2]]))
    assert np.asarray(floats).tolist() == [[0, 128, 255, 255, 0]]
    with pytest.raises(ValueError):
        to_image(a, scale=0)


def test_encode_png_round_trip_is_lossless():
    a = mnist_like_digit()
    data = encode_image(to_image(a), "out.png")
    assert data.startswith(b"\x89PNG")
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data))), a)
    # a name without an extension also gives PNG
    assert encode_image(to_image(a), "result").startswith(b"\x89PNG")


def test_encode_picks_format_from_extension():
    img = to_image(mnist_like_digit())
    expected = {
        "x.jpg": "JPEG", "x.JPEG": "JPEG", "x.webp": "WEBP", "x.bmp": "BMP",
        "x.gif": "GIF", "x.tif": "TIFF", "x.tiff": "TIFF", "x.pgm": "PPM",
        "dir.d/x.pnm": "PPM",
    }
    for name, fmt in expected.items():
        reread = Image.open(io.BytesIO(encode_image(img, name)))
        assert reread.format == fmt, name
        assert reread.size == (28, 28)
    jpeg = encode_image(img, "digit.jpg")
    assert jpeg[:3] == b"\xff\xd8\xff"
    lossless = ["x.webp", "x.bmp", "x.gif", "x.tif", "x.pgm"]
    for name in lossless:
        reread = np.asarray(Image.open(io.BytesIO(encode_image(img, name))).convert("L"))
        np.testing.assert_array_equal(reread, np.asarray(img), err_msg=name)


def test_encode_converts_modes_the_format_cannot_hold():
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    jpeg = Image.open(io.BytesIO(encode_image(rgba, "a.jpg")))
    assert jpeg.mode in ("L", "RGB") and np.asarray(jpeg.convert("L")).min() >= 250
    rgb = Image.new("RGB", (4, 4), (255, 0, 0))
    pgm = Image.open(io.BytesIO(encode_image(rgb, "a.pgm")))
    assert pgm.mode == "L"


def test_encode_unknown_extension():
    with pytest.raises(ImageError) as info:
        encode_image(to_image(np.zeros((2, 2), dtype=np.uint8)), "out.xyz")
    assert str(info.value).startswith("unsupported output format .xyz")
