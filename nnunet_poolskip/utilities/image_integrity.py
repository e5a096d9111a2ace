"""Is an image file complete? SimpleITK does not say: it reads a truncated ``.nii.gz`` (or ``.nii``) without an
error and fills the missing voxels with zeros, so a cut download or an interrupted copy would silently become a
label map with organs missing, or a prediction scored on half its voxels.

:func:`check_image_file_complete` reads the file to its end before anyone relies on it:

- a gzip-compressed file (any file starting with the gzip magic bytes: ``.nii.gz``, ``.gipl.gz``) is decompressed
  as a whole stream, every member to its end, with gzip's own CRC-32 and length check (output discarded, memory
  bounded);
- a NIfTI file (``.nii`` or ``.nii.gz``) must also hold all the voxel bytes its header promises (offset plus
  shape times bytes per voxel).

NRRD and MetaImage (``.nrrd``, ``.mha``, ``.mhd``) need no check here: SimpleITK itself raises on a truncated one
(raw and compressed). An uncompressed ``.gipl`` is not checked.
"""
from __future__ import annotations

import io
import os
import zlib
from typing import Optional, Tuple

import numpy as np

from nnunet_poolskip.utilities.geometry import ImageHeaderError

GZIP_MAGIC = b"\x1f\x8b"
_GZIP_WBITS = 16 + zlib.MAX_WBITS  # zlib with the gzip wrapper: checks the trailer's CRC-32 and length
_READ_BYTES = 1 << 20  # compressed bytes read at a time
_MAX_OUTPUT_BYTES = 1 << 22  # decompressed bytes produced at a time (labels compress up to ~1000:1)
_NIFTI_HEADER_BYTES = 540  # the larger of the NIfTI-1 (348) and NIfTI-2 (540) headers


class IncompleteImageError(ImageHeaderError):
    """A truncated or corrupt image file; the message names the file and says what is wrong."""


def check_image_file_complete(path: os.PathLike | str) -> None:
    """Raise unless the image file at ``path`` is complete (see the module docstring for what is checked).

    Call it on every image or label map before long work relies on it (conversion, evaluation, prediction
    inputs). It reads and decompresses the whole file, so it costs about what the decompression inside a
    SimpleITK read costs (``benchmarks/nifti_check_cost.py`` measures both on a CT-sized file).

    Args:
        path: an image file in any format SimpleITK reads; formats without a check here pass.

    Raises:
        IncompleteImageError: the gzip stream is cut short, corrupt (CRC or length mismatch) or followed by
            data that is not gzip; a NIfTI file holds fewer voxel bytes than its header promises. The message
            names the file. A missing or unreadable file raises ``OSError`` as ``open`` does.
    """
    path = os.fspath(path)
    with open(path, "rb") as handle:
        compressed = handle.read(2) == GZIP_MAGIC
    if compressed:
        size, head = _gzip_content(path)
        where = "decompressed"
    else:
        size = os.path.getsize(path)
        with open(path, "rb") as handle:
            head = handle.read(_NIFTI_HEADER_BYTES)
        where = "in the file"
    if str(path).endswith((".nii", ".nii.gz")):
        needed = nifti_data_end(head)
        if needed is not None and size < needed:
            raise IncompleteImageError(f"{path} is truncated: its NIfTI header promises {needed} bytes (header and "
                                       f"voxel data), {where} there are only {size}")


def _gzip_content(path: str) -> Tuple[int, bytes]:
    """(decompressed size in bytes, its first bytes) of a gzip file read to its end; raises IncompleteImageError."""
    total, head = 0, b""
    with open(path, "rb") as handle:
        decompressor = zlib.decompressobj(_GZIP_WBITS)
        data, exhausted = b"", False
        while True:
            if not data and not exhausted:
                data = handle.read(_READ_BYTES)
                exhausted = not data
            try:
                out = decompressor.decompress(data, _MAX_OUTPUT_BYTES)
            except zlib.error as error:
                raise IncompleteImageError(f"{path} is corrupt: its gzip stream does not decompress (zlib: "
                                           f"{error})") from None
            if len(head) < _NIFTI_HEADER_BYTES:
                head += out[:_NIFTI_HEADER_BYTES - len(head)]
            total += len(out)
            if decompressor.eof:  # one member complete and its CRC checked; another may follow
                rest = decompressor.unused_data
                if len(rest) < len(GZIP_MAGIC):
                    rest += handle.read(_READ_BYTES)
                if not rest:
                    return total, head
                if rest.startswith(GZIP_MAGIC):
                    decompressor, data, exhausted = zlib.decompressobj(_GZIP_WBITS), rest, False
                    continue
                if _only_zeros(rest, handle):  # padding, as Python's gzip accepts
                    return total, head
                raise IncompleteImageError(f"{path} is corrupt: data that is not gzip follows its gzip stream")
            data = decompressor.unconsumed_tail
            if exhausted and not data and not out:
                raise IncompleteImageError(f"{path} is truncated: its gzip stream ends after {total} decompressed "
                                           f"bytes without the end-of-stream marker (an incomplete download or "
                                           f"copy?)")


def _only_zeros(data: bytes, handle: io.BufferedReader) -> bool:
    """Whether ``data`` and the rest of ``handle`` are all zero bytes."""
    while data:
        if data.count(0) != len(data):
            return False
        data = handle.read(_READ_BYTES)
    return True


def nifti_data_end(head: bytes) -> Optional[int]:
    """Where a single-file NIfTI's voxel data end (bytes from the file start), read from its header.

    Args:
        head: the first bytes of the (decompressed) file, at least 540 for NIfTI-2, 348 for NIfTI-1.

    Returns:
        ``vox_offset + prod(shape) * bytes per voxel``, or None when ``head`` is no single-file NIfTI-1/2 header
        (e.g. an Analyze-style pair, whose voxels are in another file).
    """
    import nibabel

    for header_class in (nibabel.Nifti2Header, nibabel.Nifti1Header):
        block = head[:header_class.sizeof_hdr]
        if not header_class.may_contain_header(block):
            continue
        try:
            header = header_class.from_fileobj(io.BytesIO(block), check=False)
        except Exception:  # a header nibabel cannot parse: leave the verdict to the image reader
            return None
        if header["magic"].item() != header_class.single_magic:
            return None
        voxels = int(np.prod(header.get_data_shape(), dtype=np.int64))
        return int(header.get_data_offset()) + voxels * header.get_data_dtype().itemsize
    return None
