from pathlib import Path

import numpy as np
import pydicom
import pydicom.encaps
import pytest
from pydicom.data import get_testdata_file

from spine_model.data.dicom import DicomReadError, read_frame, slice_position, to_uint8


def _rewrite(tmp_path, **changes):
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    for key, value in changes.items():
        setattr(ds, key, value)
    path = tmp_path / "x.dcm"
    ds.save_as(path)
    return path, ds.pixel_array.astype(np.float32)


def test_rescale_slope_and_intercept_are_applied(tmp_path):
    path, raw = _rewrite(tmp_path, RescaleSlope=2.0, RescaleIntercept=-100.0)
    np.testing.assert_allclose(read_frame(path).pixels, raw * 2.0 - 100.0)


def test_monochrome1_is_inverted(tmp_path):
    path, raw = _rewrite(tmp_path, PhotometricInterpretation="MONOCHROME1")
    pixels = read_frame(path).pixels
    assert pixels[raw == raw.max()].max() == pytest.approx(raw.min())
    assert pixels[raw == raw.min()].min() == pytest.approx(raw.max())


def test_reads_signed_real_mr_file():
    frame = read_frame(get_testdata_file("MR_small.dcm"))
    assert frame.pixels.shape == (64, 64) and frame.pixels.dtype == np.float32
    assert frame.spacing_row > 0 and np.isfinite(frame.position)


def test_truncated_file_is_a_clear_error(tmp_path):
    source = get_testdata_file("MR_small.dcm")
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(Path(source).read_bytes()[:200])
    with pytest.raises(DicomReadError, match="broken.dcm"):
        read_frame(broken)
    garbage = tmp_path / "garbage.dcm"
    garbage.write_bytes(b"not a dicom file at all")
    with pytest.raises(DicomReadError, match="garbage.dcm"):
        read_frame(garbage)


def test_to_uint8_windows_robustly():
    pixels = np.linspace(0, 1000, 10000, dtype=np.float32).reshape(100, 100)
    pixels[0, 0] = 1e9  # one hot pixel must not crush the rest to black
    image = to_uint8(pixels)
    assert image.dtype == np.uint8
    assert image[0, 0] == 255 and image[50, 50] in range(120, 136)
    assert to_uint8(np.full((4, 4), 7.0)).max() == 0


def test_slice_position_follows_the_slice_normal(tmp_path):
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]  # sagittal: normal along -x
    positions = []
    for x in (10.0, -5.0, 0.0):
        ds.ImagePositionPatient = [x, 0.0, 0.0]
        path = tmp_path / f"{x}.dcm"
        ds.save_as(path)
        positions.append(slice_position(path))
    assert np.argsort(positions).tolist() == np.argsort([-10.0, 5.0, 0.0]).tolist()


MR_VARIANTS = [
    "MR_small.dcm", "MR_small_RLE.dcm", "MR_small_bigendian.dcm", "MR_small_expb.dcm", "MR_small_implicit.dcm",
    "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_padded.dcm",
]  # fmt: skip


@pytest.mark.parametrize("name", MR_VARIANTS)
def test_every_transfer_syntax_of_pydicoms_mr_files_decodes_to_the_same_pixels(name):
    reference = read_frame(get_testdata_file("MR_small.dcm")).pixels
    frame = read_frame(get_testdata_file(name))
    assert frame.pixels.shape == (64, 64)
    np.testing.assert_array_equal(frame.pixels, reference)  # lossless, whatever the encoding


def test_mr_files_cover_the_compressed_syntaxes():
    syntaxes = {pydicom.dcmread(get_testdata_file(name)).file_meta.TransferSyntaxUID.name for name in MR_VARIANTS}
    assert {"RLE Lossless", "JPEG-LS Lossless Image Compression", "JPEG 2000 Image Compression (Lossless Only)"} <= (
        syntaxes
    )


def _saved(ds: pydicom.Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda ds: setattr(ds, "Rows", 20), r"does not match the header \(Rows x Columns 20 x 64 at 16 bits"),
        (lambda ds: setattr(ds, "PixelData", ds.PixelData[:1000]), "pixel data truncated: 1000 bytes"),
        (lambda ds: setattr(ds, "NumberOfFrames", 2), "holds 2 frames"),
        (lambda ds: delattr(ds, "Columns"), "lacks Columns"),
        (lambda ds: delattr(ds, "ImagePositionPatient"), "lacks ImagePositionPatient"),
    ],
    ids=["rows-smaller-than-data", "short-pixel-data", "multi-frame", "no-columns", "no-position"],
)
def test_bad_headers_get_their_own_reason(tmp_path, change, reason):
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    change(ds)
    path = _saved(ds, tmp_path / "bad.dcm")
    with pytest.raises(DicomReadError, match=reason) as error:
        read_frame(path)
    assert str(path) in str(error.value)


@pytest.mark.parametrize("keep", [200, 1000, 8000])
def test_a_file_cut_short_is_called_truncated(tmp_path, keep):
    path = tmp_path / "cut.dcm"
    path.write_bytes(Path(get_testdata_file("MR_small.dcm")).read_bytes()[:keep])
    with pytest.raises(DicomReadError, match="truncated|not a readable DICOM"):
        read_frame(path)


def test_a_transfer_syntax_without_any_decoder_is_named(tmp_path):
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    ds.file_meta.TransferSyntaxUID = pydicom.uid.MPEG2MPML  # video: no pixel decoder exists for it
    ds.PixelData = pydicom.encaps.encapsulate([ds.PixelData])
    path = tmp_path / "video.dcm"
    ds.save_as(path)
    with pytest.raises(DicomReadError, match=r"video.dcm: transfer syntax .* \(MPEG2 .*\) has no pixel decoder"):
        read_frame(path)
