"""HEIC/HEIF and AVIF photos, the default formats of today's phones (issue 24): decoded as
displayed, scored like their JPEGs through the real served ensemble, refused before decoding
when their header declares too many pixels, and a broken one fails only itself."""

from __future__ import annotations

import csv
import io
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pillow_heif
import pytest
from PIL import AvifImagePlugin, Image, ImageOps

from sampleiqa.runtime.preprocessing import PreprocessError, decode_bgr
from sampleiqa.runtime.preprocessing.decode import layout, sniff

from .badinputs import PORTRAIT, PORTRAIT_FACE
from .helpers import FACES, on_face

# Real BIQ2021 photos with a face marked by hand (tests/helpers.py).
PHOTOS = sorted(p for p in FACES if p.parent.parent.name == "biq2021")[:3]
FORMATS = ("heic", "avif")


def encode(rgb: Image.Image, fmt: str, orientation: int = 1) -> bytes:
    """`rgb` as a HEIC (pillow-heif, x265) or AVIF (Pillow, aom), quality 95. An EXIF
    orientation is written as the irot/imir boxes (and, for HEIC, kept in its EXIF too, as
    phones do): the file displays rotated."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    if fmt == "heic":
        heif = pillow_heif.from_bytes("RGB", rgb.size, rgb.tobytes())
        heif.info["exif"] = exif.tobytes()
        heif.save(buf, format="HEIF", quality=95)
    else:
        rgb.save(buf, "AVIF", quality=95, exif=exif.tobytes())
    return buf.getvalue()


def declaring(data: bytes, width: int, height: int) -> bytes:
    """The same file with its one image-size property (ispe) declaring width x height."""
    assert data.count(b"ispe") == 1
    at = data.index(b"ispe") + 8  # type, version and flags
    return data[:at] + struct.pack(">II", width, height) + data[at + 8 :]


@pytest.fixture(scope="module")
def copies() -> dict[Path, dict[str, bytes]]:
    """Each photo's JPEG as it is, and HEIC/AVIF copies of the pixels a server decodes from it."""
    if not PHOTOS:
        pytest.skip("no BIQ2021 photo with a marked face found")
    out = {}
    for path in PHOTOS:
        jpeg = path.read_bytes()
        rgb = Image.fromarray(decode_bgr(jpeg)[:, :, ::-1])
        out[path] = {"jpeg": jpeg, **{fmt: encode(rgb, fmt) for fmt in FORMATS}}
    return out


def upright_and_stored() -> tuple[Image.Image, Image.Image]:
    """The portrait cut to 512x400 (so a rotation shows in the shape), and stored on its side."""
    upright = Image.open(PORTRAIT).convert("RGB").crop((0, 0, 512, 400))
    return upright, upright.transpose(Image.Transpose.ROTATE_90)


@pytest.fixture(scope="module")
def portrait_heic() -> bytes:
    return encode(Image.open(PORTRAIT).convert("RGB"), "heic")


def test_sniffed_by_brand_and_walked_for_size():
    rgb = Image.open(PORTRAIT).convert("RGB")
    for fmt, kind in (("heic", "heif"), ("avif", "avif")):
        data = encode(rgb, fmt)
        assert sniff(data) == kind
        assert layout(data, kind) == (rgb.size, False)
        assert layout(data, kind).truncated is False and layout(data[:-1], kind).truncated is True
    ftyp = b"ftypmif1\x00\x00\x00\x00"  # the generic major brand: the compatible brands decide
    assert sniff(b"\x00\x00\x00\x18" + ftyp + b"mif1avif") == "avif"
    assert sniff(b"\x00\x00\x00\x18" + ftyp + b"mif1heic") == "heif"


@pytest.mark.parametrize("fmt", FORMATS)
def test_decoded_pixels_are_the_decoders_own(copies, fmt):
    """decode_bgr gives, in BGR order, exactly what pillow-heif / Pillow decode."""
    data = copies[PHOTOS[0]][fmt]
    if fmt == "heic":
        rgb = np.asarray(pillow_heif.open_heif(io.BytesIO(data)).to_pillow().convert("RGB"))
    else:
        rgb = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    bgr = decode_bgr(data)
    assert bgr.dtype == np.uint8 and bgr.flags.c_contiguous and bgr.flags.writeable
    np.testing.assert_array_equal(bgr, rgb[:, :, ::-1])
    jpeg = decode_bgr(copies[PHOTOS[0]]["jpeg"])  # what it was made from, up to the lossy codec
    assert bgr.shape == jpeg.shape and np.abs(bgr.astype(int) - jpeg).mean() < 3


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("mode", ["L", "LA", "RGBA"])
def test_grayscale_and_alpha_come_out_as_bgr(fmt, mode):
    img = Image.open(PORTRAIT).convert(mode)
    buf = io.BytesIO()
    if fmt == "heic":
        pillow_heif.from_pillow(img).save(buf, format="HEIF", quality=95)
    else:
        img.save(buf, "AVIF", quality=95)
    bgr = decode_bgr(buf.getvalue())
    assert bgr.shape == (img.height, img.width, 3) and bgr.flags.c_contiguous
    grey = np.asarray(img.convert("L"), dtype=int)
    assert np.abs(bgr.mean(axis=2) - grey).mean() < 3  # the image, alpha dropped
    if mode != "RGBA":
        assert (bgr[:, :, 0] == bgr[:, :, 2]).mean() > 0.95


@pytest.mark.parametrize("fmt", FORMATS)
def test_rotated_file_decodes_as_displayed(fmt):
    """Stored on its side with irot (plus EXIF orientation 6 in the HEIC, as iPhones write):
    rotated once, like the EXIF-rotated JPEG of the bad-input corpus."""
    upright, stored = upright_and_stored()
    data = encode(stored, fmt, orientation=6)
    if fmt == "heic":  # both, as in an iPhone's file
        assert b"irot" in data and pillow_heif.open_heif(io.BytesIO(data)).to_pillow().info["original_orientation"] == 6
    bgr = decode_bgr(data)
    assert bgr.shape[:2] == (upright.height, upright.width)
    assert np.abs(bgr[:, :, ::-1].astype(int) - np.asarray(upright)).mean() < 3


def test_displayed_orientation_matches_pillows_exif_transpose():
    """For AVIF, Pillow turns irot/imir into the EXIF orientation; decode_bgr applies it."""
    data = encode(upright_and_stored()[1], "avif", orientation=6)
    with Image.open(io.BytesIO(data)) as im:
        assert im.getexif().get(0x0112) == 6
        shown = np.asarray(ImageOps.exif_transpose(im).convert("RGB"))
    np.testing.assert_array_equal(decode_bgr(data), shown[:, :, ::-1])


@pytest.mark.server
@pytest.mark.parametrize("fmt", FORMATS)
def test_scores_and_face_match_the_jpeg(client, copies, fmt):
    diffs = []
    for path, data in copies.items():
        jpeg, other = client.score(data["jpeg"]), client.score(data[fmt])
        assert jpeg.ok and other.ok, (path.name, jpeg.error, other.error)
        assert other.face_found and on_face(other.face_box, FACES[path]), (path.name, other.face_box)
        assert max(abs(a - b) for a, b in zip(other.face_box, jpeg.face_box)) <= 4, (other.face_box, jpeg.face_box)
        diffs.append(other.score - jpeg.score)
    assert max(map(abs, diffs)) < 0.02, diffs


@pytest.mark.server
@pytest.mark.parametrize("fmt", FORMATS)
def test_rotated_file_face_box_is_in_the_displayed_image(client, fmt):
    upright, stored = upright_and_stored()
    r = client.score(encode(stored, fmt, orientation=6))
    assert r.ok and r.face_found and on_face(r.face_box, PORTRAIT_FACE), r
    x, y, w, h = PORTRAIT_FACE
    assert not on_face(r.face_box, (y, upright.width - x - w, h, w))  # where the stored pixels have it


@pytest.mark.parametrize("fmt", FORMATS)
def test_too_many_declared_pixels_are_refused_before_decoding(copies, fmt):
    """The header declares 40000x40000 and the image data is cut: the decoders would fail
    with their own errors (libheif's security limit, libavif's parser), yet the answer is
    the pixel limit, so no decoder ran. At a limit just under the real size, the intact file
    is refused too."""
    data = copies[PHOTOS[0]][fmt]
    bomb = declaring(data, 40000, 40000)[: len(data) // 2]
    with pytest.raises(PreprocessError, match=r"^\[too_many_pixels\] .*40000x40000") as exc:
        decode_bgr(bomb)
    assert exc.value.code == "too_many_pixels"
    with pytest.raises(Exception, match="Security limit|BMFF parsing failed"):  # what decoding would have said
        np.asarray((pillow_heif.open_heif if fmt == "heic" else AvifImagePlugin.AvifImageFile)(io.BytesIO(bomb)))
    w, h = Image.open(PHOTOS[0]).size
    with pytest.raises(PreprocessError, match=r"^\[too_many_pixels\]"):
        decode_bgr(data, max_pixels=w * h - 1)
    assert decode_bgr(data, max_pixels=w * h).shape == (h, w, 3)


@pytest.mark.parametrize("fmt", FORMATS)
def test_broken_files_get_their_error_code(copies, fmt):
    data = copies[PHOTOS[0]][fmt]
    mdat = data.index(b"mdat") + 4
    for broken, code in (
        (data[: len(data) // 2], "truncated"),
        (data[:40], "truncated"),
        (data[:mdat] + bytes(len(data) - mdat), "decode_failed"),  # image data zeroed
        (data[:mdat] + b"\xff" * (len(data) - mdat), "decode_failed"),
    ):
        with pytest.raises(PreprocessError) as exc:
            decode_bgr(broken)
        assert exc.value.code == code, exc.value


@pytest.mark.server
def test_a_broken_heic_fails_only_itself(client, server, copies, portrait_heic):
    data = copies[PHOTOS[0]]
    expected = client.score(data["heic"]).score
    mdat = portrait_heic.index(b"mdat") + 4
    zeroed = portrait_heic[:mdat] + bytes(len(portrait_heic) - mdat)
    bomb = declaring(portrait_heic, 40000, 40000)[: len(portrait_heic) // 2]
    for broken, code in ((zeroed, "decode_failed"), (portrait_heic[:-100], "truncated"), (bomb, "too_many_pixels")):
        r = client.score(broken)
        assert r.error_code == code and r.error.startswith(f"[{code}] "), r
        after = client.score(data["heic"])  # the next request is served as before
        assert after.ok and after.score == pytest.approx(expected, abs=1e-5)
    results = client.score_batch([data["heic"], zeroed, data["avif"], portrait_heic[:-100]])
    assert [r.status for r in results] == ["ok", "error", "ok", "error"]
    assert [r.error_code for r in results] == ["", "decode_failed", "", "truncated"]
    assert results[0].score == pytest.approx(expected, abs=1e-5)
    assert server.running() and client.is_ready()


@pytest.mark.server
def test_bulk_cli_finds_and_scores_phone_suffixes(server, copies, tmp_path):
    """Folders give .heic .heif .hif .avif files (any case) like JPEGs."""
    path = PHOTOS[0]
    names = {"p.jpg": "jpeg", "p.heic": "heic", "p.HEIF": "heic", "p.hif": "heic", "p.avif": "avif"}
    folder = tmp_path / "photos"
    folder.mkdir()
    for name, fmt in names.items():
        (folder / name).write_bytes(copies[path][fmt])
    out = tmp_path / "scores.csv"
    res = subprocess.run(
        [sys.executable, "-m", "sampleiqa.cli", "score", str(folder), "--url", server.url, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    with open(out, newline="") as f:
        rows = {Path(r["path"]).name: r for r in csv.DictReader(f)}
    assert sorted(rows) == sorted(names) and all(r["status"] == "ok" for r in rows.values()), rows
    scores = [float(r["score"]) for r in rows.values()]
    assert max(scores) - min(scores) < 0.02, rows
