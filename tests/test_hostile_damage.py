"""Corrupt data that must not load silently: damaged converted directories and `.bin` records cut short.

A converted directory's manifest records the size and CRC-32 of every parameter file
(`converters/digests.py`); a flipped byte, a truncated, missing or extra file is a one-line
`CheckpointError` naming the file, unless the user passes `verify=False`. A `.bin` whose
pickle claims more bytes than a record holds is refused before torch's memory map could
read past the record (`converters/torch_records.py`). Each probe runs under a time bound.
"""

from __future__ import annotations

import json
import os
import shutil
import zipfile

import numpy as np
import pytest

import jaxinterp as ji
from tests.hostile import refused, within

TOKENS = np.array([[1, 5, 9, 17, 33, 2]], np.int32)


@pytest.fixture(scope="module")
def converted(tmp_path_factory, tiny_checkpoint):
    """A converted directory of the tiny SmolLM2-like checkpoint (copy it before damaging it)."""
    folder = tmp_path_factory.mktemp("converted") / "smol"
    ji.convert(tiny_checkpoint("smol")[0], str(folder), progress=False)
    return folder


@pytest.fixture
def copy(converted, tmp_path):
    target = tmp_path / "copy"
    shutil.copytree(converted, target)
    return target


def _largest_params_file(folder) -> str:
    return max((os.path.join(d, f) for d, _, files in os.walk(folder / "params") for f in files), key=os.path.getsize)


def test_an_intact_directory_loads_with_the_checkpoints_logits(converted, tiny_checkpoint):
    with within(60):
        restored = ji.load(str(converted), progress=False)
        direct = ji.load(tiny_checkpoint("smol")[0], progress=False)
    np.testing.assert_array_equal(np.asarray(restored(TOKENS)), np.asarray(direct(TOKENS)))


def test_a_flipped_byte_in_a_parameter_file_is_named(copy):
    victim = _largest_params_file(copy)
    with open(victim, "r+b") as f:
        f.seek(os.path.getsize(victim) // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0x01]))
    refused(lambda: ji.load(str(copy), progress=False), os.path.basename(victim), "damaged: expected crc32",
             "verify=False")
    with within(60):  # the user who accepts the risk may still load it
        assert ji.load(str(copy), progress=False, verify=False).config.num_layers == 2


def test_a_truncated_parameter_file_is_named(copy):
    victim = _largest_params_file(copy)
    size = os.path.getsize(victim)
    os.truncate(victim, size - 7)
    refused(lambda: ji.load(str(copy), progress=False), os.path.basename(victim), f"expected {size} bytes, found {size - 7}")


def test_a_missing_and_an_extra_parameter_file_are_named(copy):
    victim = _largest_params_file(copy)
    shutil.move(victim, copy / "params" / "moved")
    refused(lambda: ji.load(str(copy), progress=False), "moved", "not listed in the digests")
    os.remove(copy / "params" / "moved")
    refused(lambda: ji.load(str(copy), progress=False), os.path.basename(victim), "missing")


@pytest.mark.parametrize("digests, needle", [
    ({"../../etc/passwd": {"bytes": 1, "crc32": "00000000"}}, "no absolute or '..' path"),
    ({}, "expected an object of file digests"),
    ("crc", "expected an object of file digests"),
    (None, "expected an object of file digests"),
])
def test_a_manifest_with_broken_digests_is_named(copy, digests, needle):
    manifest = json.loads((copy / "jaxinterp.json").read_text())
    if isinstance(digests, dict) and digests:  # an entry beside the true ones
        digests = {**manifest["digests"], **digests}
    (copy / "jaxinterp.json").write_text(json.dumps({**manifest, "digests": digests}))
    refused(lambda: ji.load(str(copy), progress=False), "jaxinterp.json", needle)


def test_a_digest_entry_of_the_wrong_shape_is_named(copy):
    manifest = json.loads((copy / "jaxinterp.json").read_text())
    name = next(iter(manifest["digests"]))
    manifest["digests"][name] = {"bytes": "12", "crc32": "\x1b[2Jzz"}
    (copy / "jaxinterp.json").write_text(json.dumps(manifest))
    refused(lambda: ji.load(str(copy), progress=False), "expected bytes and crc32", "\\x1b")


def test_a_format_1_directory_loads_only_unverified(copy):
    manifest = json.loads((copy / "jaxinterp.json").read_text())
    del manifest["digests"]
    (copy / "jaxinterp.json").write_text(json.dumps({**manifest, "format": 1}))
    refused(lambda: ji.load(str(copy), progress=False), "format 1", "verify=False")
    with within(60):
        assert ji.load(str(copy), progress=False, verify=False).config.num_layers == 2


# -- .bin records ------------------------------------------------------------------------------


def _rewrite(path, edit) -> None:
    """Rewrites the zip at `path` with `edit(name, data) -> data` applied to every record."""
    with zipfile.ZipFile(path) as original:
        records = [(info, edit(info.filename, original.read(info.filename))) for info in original.infolist()]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as out:
        for info, data in records:
            out.writestr(info, data)


@pytest.fixture
def bin_checkpoint(tmp_path, tiny_checkpoint):
    """The tiny checkpoint saved as `pytorch_model.bin` (with its config), and that file's first data record."""
    import torch

    saved, model = tiny_checkpoint("smol")
    folder = tmp_path / "bin"
    folder.mkdir()
    shutil.copy(os.path.join(saved, "config.json"), folder)
    path = folder / "pytorch_model.bin"
    torch.save(model.state_dict(), path)
    with zipfile.ZipFile(path) as archive:
        first = sorted((n for n in archive.namelist() if "/data/" in n), key=lambda n: int(n.rsplit("/", 1)[1]))[0]
    return folder, path, first


def test_an_intact_bin_loads_like_its_safetensors(bin_checkpoint, tiny_checkpoint):
    folder, _, _ = bin_checkpoint
    with within(60):
        from_bin = ji.load(str(folder), progress=False)
        from_safetensors = ji.load(tiny_checkpoint("smol")[0], progress=False)
    np.testing.assert_array_equal(np.asarray(from_bin(TOKENS)), np.asarray(from_safetensors(TOKENS)))


def test_a_bin_record_cut_short_is_refused_not_read_past_its_end(bin_checkpoint):
    folder, path, first = bin_checkpoint
    _rewrite(path, lambda name, data: data[:12] if name == first else data)
    refused(lambda: ji.load(str(folder), progress=False), "pytorch_model.bin", first, "holds 12 (cut short)")


def test_a_bin_record_emptied_isrefused(bin_checkpoint):
    folder, path, first = bin_checkpoint
    _rewrite(path, lambda name, data: b"" if name == first else data)
    refused(lambda: ji.load(str(path), progress=False), "pytorch_model.bin", "holds 0 (cut short)")


def test_a_bin_whose_directory_claims_more_than_the_file_holds_isrefused(bin_checkpoint):
    folder, path, first = bin_checkpoint
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(first)
    at = data.find(b"PK\x01\x02")  # walk the central directory to the entry of `first`
    while data[at + 46:at + 46 + int.from_bytes(data[at + 28:at + 30], "little")].decode() != first:
        at = data.find(b"PK\x01\x02", at + 4)
    huge = (info.file_size + len(data)).to_bytes(4, "little")
    data[at + 20:at + 24] = huge
    data[at + 24:at + 28] = huge
    path.write_bytes(bytes(data))
    refused(lambda: ji.load(str(folder), progress=False), "pytorch_model.bin", "could not read it")
