"""Omniglot loading: real archives, cache validation, preprocessing and bad input."""

from __future__ import annotations

import hashlib
import json
import logging
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import metaloop.data.omniglot as om
from metaloop.data import (
    OmniglotError,
    default_cache_dir,
    download_archive,
    load_omniglot,
    load_omniglot_subset,
    preprocess_png,
    resolve_root,
)


# -- real data ------------------------------------------------------------------------------
def test_real_archives_decode_to_the_official_counts(background, evaluation) -> None:
    for ds, (images, alphabets, characters) in (
        (background, om.EXPECTED_COUNTS["background"]),
        (evaluation, om.EXPECTED_COUNTS["evaluation"]),
    ):
        assert len(ds) == images and ds.num_classes == characters
        assert len(set(ds.values("alphabet"))) == alphabets
        assert ds.image_shape == (1, 28, 28) and ds.storage.dtype == torch.uint8
        assert (ds.class_sizes == 20).all()  # 20 drawers per character
    # inverted: strokes bright on a dark background
    x = evaluation.storage.float() / 255
    assert x.mean() < 0.2 and x.amax() == 1.0
    assert (x[:, :, 0, :] < 0.05).float().mean() > 0.95  # border is background
    info = background.info(0)
    assert info["character_id"] == f"{info['alphabet']}/{info['character']}"
    assert not set(background.values("alphabet")) & set(evaluation.values("alphabet"))


def test_small_archive_matches_background_images(omniglot_root, background, cache_dir) -> None:
    small = load_omniglot_subset(omniglot_root, "small1", cache_dir=cache_dir, workers=2)
    assert (len(small), small.num_classes) == om.EXPECTED_COUNTS["small1"][::2]
    assert (cache_dir / "omniglot" / "images_background_small1-28px.npz").exists()
    # small1 holds whole background alphabets, byte-identical images: same decoded pixels
    cid = small.info(7)["character_id"]
    (match,) = [
        c for c in range(background.num_classes) if background.info(c)["character_id"] == cid
    ]
    assert torch.equal(small.images_of(7), background.images_of(match))


def test_root_resolution_and_missing_files(omniglot_root, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("METALOOP_DATA", str(omniglot_root.parent))
    assert resolve_root(None) == omniglot_root
    monkeypatch.setenv("METALOOP_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    with pytest.raises(OmniglotError) as err:
        load_omniglot(tmp_path / "empty", ("background", "evaluation"))
    message = str(err.value)
    assert "images_background.zip, images_evaluation.zip" in message
    assert str(tmp_path / "empty") in message and "download=True" in message
    monkeypatch.delenv("METALOOP_DATA")
    with pytest.raises(OmniglotError, match="METALOOP_DATA"):
        resolve_root(None)


# -- cache ----------------------------------------------------------------------------------
def test_cache_is_written_reused_and_rebuilt_when_stale(make_archive, tmp_path, caplog) -> None:
    archive = make_archive("images_background_small2", {"Greek": 2, "Latin": 2})
    cache = tmp_path / "cache"
    kwargs = dict(cache_dir=cache, strict=False, workers=1)
    first = load_omniglot_subset(archive.parent, "small2", 20, **kwargs)
    assert first.image_shape == (1, 20, 20) and first.num_classes == 4 and len(first) == 12
    path = cache / "omniglot" / "images_background_small2-20px.npz"
    assert path.exists()

    calls = []
    real_decode = om._decode_all

    def counting(*args, **kw):
        calls.append(args)
        return real_decode(*args, **kw)

    om._decode_all = counting
    try:
        again = load_omniglot_subset(archive.parent, "small2", 20, **kwargs)
        assert calls == [] and torch.equal(again.storage, first.storage)  # from cache
        other_size = load_omniglot_subset(archive.parent, "small2", 12, **kwargs)
        assert len(calls) == 1 and other_size.image_shape == (1, 12, 12)

        # a cache from another format version is detected and rebuilt, never used
        with np.load(path) as f:
            content = {k: f[k] for k in f.files}
        meta = json.loads(str(content["meta"]))
        meta["version"] = om.CACHE_VERSION - 1
        content["images"] = np.zeros_like(content["images"])  # poisoned
        with open(path, "wb") as f:
            np.savez_compressed(f, **{**content, "meta": np.array(json.dumps(meta))})
        with caplog.at_level(logging.WARNING, logger="metaloop.data.omniglot"):
            rebuilt = load_omniglot_subset(archive.parent, "small2", 20, **kwargs)
        assert len(calls) == 2 and "rebuilding" in caplog.text and "version" in caplog.text
        assert torch.equal(rebuilt.storage, first.storage)

        # a changed source archive invalidates the cache too
        make_archive("images_background_small2", {"Greek": 3, "Latin": 2})
        changed = load_omniglot_subset(archive.parent, "small2", 20, **kwargs)
        assert len(calls) == 3 and changed.num_classes == 5

        # an unreadable cache file is rebuilt
        path.write_bytes(b"garbage")
        assert load_omniglot_subset(archive.parent, "small2", 20, **kwargs).num_classes == 5
        assert len(calls) == 4
    finally:
        om._decode_all = real_decode


def test_parallel_decode_matches_serial(make_archive, monkeypatch) -> None:
    archive = make_archive("images_evaluation", {"A": 3, "B": 3}, drawers=4)
    source = om._Source(archive)
    names = om._parse_layout(source, "evaluation", strict=False).names
    source.close()
    serial = om._decode_all(archive, names, 28, workers=1)
    monkeypatch.setattr(om, "_PARALLEL_MIN", 0)
    parallel = om._decode_all(archive, names, 28, workers=2)
    assert serial.shape == (24, 28, 28) and np.array_equal(serial, parallel)


def test_extracted_folder_works_like_the_zip(make_archive, tmp_path) -> None:
    archive = make_archive("images_background_small1", {"Korean": 2})
    folder_root = tmp_path / "extracted"
    with zipfile.ZipFile(archive) as z:
        z.extractall(folder_root)
    from_zip = load_omniglot_subset(archive.parent, "small1", use_cache=False, strict=False)
    from_dir = load_omniglot_subset(folder_root, "small1", use_cache=False, strict=False)
    assert torch.equal(from_zip.storage, from_dir.storage)
    assert from_zip.class_info == from_dir.class_info


# -- preprocessing --------------------------------------------------------------------------
def test_preprocess_resizes_and_inverts(png) -> None:
    img = np.ones((105, 105), dtype=bool)  # white background
    img[:, :53] = False  # left half black (stroke)
    out = preprocess_png(png(img), 28)
    assert out.shape == (28, 28) and out.dtype == np.uint8
    assert out[:, :12].min() == 255 and out[:, 18:].max() == 0  # strokes bright
    assert 0 < out[:, 14].mean() < 255  # edge is blended
    assert preprocess_png(png(img), None).shape == (105, 105)
    with pytest.raises(OmniglotError, match=r"x.png: image of size 104x104, expected 105x105"):
        preprocess_png(png(np.ones((104, 104), dtype=bool)), 28, "x.png")
    with pytest.raises(OmniglotError, match=r"y\.png: not a decodable PNG"):
        preprocess_png(b"not a png", 28, "y.png")


# -- bad input ------------------------------------------------------------------------------
def test_corrupt_and_truncated_zips(make_archive, tmp_path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "images_evaluation.zip").write_bytes(b"PK\x03\x04 definitely not a zip")
    with pytest.raises(
        OmniglotError, match=r"images_evaluation.zip is not a readable zip.*corrupt"
    ):
        load_omniglot_subset(bad, "evaluation", use_cache=False)
    archive = make_archive("images_evaluation", {"A": 2}, directory=tmp_path / "trunc")
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) // 2])
    with pytest.raises(OmniglotError, match=r"images_evaluation\.zip"):
        load_omniglot_subset(archive.parent, "evaluation", use_cache=False, strict=False)


def test_member_with_bad_crc_is_reported(make_archive, tmp_path) -> None:
    archive = make_archive("images_evaluation", {"A": 1}, drawers=1, directory=tmp_path / "crc")
    with zipfile.ZipFile(archive) as z:
        info = z.infolist()[0]
    data = bytearray(archive.read_bytes())
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    data[start + 40] ^= 0xFF  # flip a byte inside the stored PNG
    archive.write_bytes(bytes(data))
    with pytest.raises(OmniglotError, match=rf"{info.filename}.*corrupt|{info.filename}.*PNG"):
        load_omniglot_subset(archive.parent, "evaluation", use_cache=False, strict=False)


def test_wrong_layout_and_wrong_image_size(make_archive, tmp_path, png) -> None:
    wrong_top = make_archive(
        "images_background", {"A": 1}, name="images_evaluation.zip", directory=tmp_path / "top"
    )
    with pytest.raises(
        OmniglotError, match=r"unexpected entry 'images_background/A/.*images_evaluation/<alphabet>"
    ):
        load_omniglot_subset(wrong_top.parent, "evaluation", use_cache=False, strict=False)
    stray = make_archive(
        "images_evaluation",
        {"A": 1},
        directory=tmp_path / "stray",
        extra={"images_evaluation/A/notes.txt": b"hi"},
    )
    with pytest.raises(OmniglotError, match=r"notes\.txt"):
        load_omniglot_subset(stray.parent, "evaluation", use_cache=False, strict=False)
    junk_ok = make_archive(
        "images_evaluation",
        {"A": 1},
        directory=tmp_path / "junk",
        extra={"__MACOSX/images_evaluation/._x": b"", "images_evaluation/.DS_Store": b""},
    )
    assert (
        load_omniglot_subset(
            junk_ok.parent, "evaluation", use_cache=False, strict=False
        ).num_classes
        == 1
    )
    small = make_archive("images_evaluation", {"A": 1}, size=80, directory=tmp_path / "size")
    with pytest.raises(
        OmniglotError,
        match=r"images_evaluation/A/character01/0001_01.png: image of size 80x80, expected 105x105",
    ):
        load_omniglot_subset(small.parent, "evaluation", use_cache=False, strict=False)


def test_strict_counts_catch_incomplete_archives(make_archive, tmp_path) -> None:
    archive = make_archive("images_background", {"A": 2})
    message = (
        r"holds 6 images of 2 characters in 1 alphabets; "
        r"the official images_background holds 19280"
    )
    with pytest.raises(OmniglotError, match=message):
        load_omniglot_subset(archive.parent, "background", use_cache=False)
    # a cache built with strict=False does not let a strict load through
    cache = tmp_path / "strict-cache"
    load_omniglot_subset(archive.parent, "background", cache_dir=cache, strict=False)
    with pytest.raises(OmniglotError, match=message):
        load_omniglot_subset(archive.parent, "background", cache_dir=cache)
    with pytest.raises(OmniglotError, match="image_size must be a positive integer"):
        load_omniglot_subset(archive.parent, "background", 0)
    with pytest.raises(OmniglotError, match="unknown Omniglot subset 'train'"):
        load_omniglot_subset(archive.parent, "train")


# -- download -------------------------------------------------------------------------------
def test_download_verifies_checksum_and_zip(make_archive, tmp_path) -> None:
    server = tmp_path / "server"
    archive = make_archive("images_background_small1", {"A": 1}, directory=server)
    good = {archive.name: ("sha256", hashlib.sha256(archive.read_bytes()).hexdigest())}
    dest = tmp_path / "dest"
    path = download_archive("small1", dest, url=server.as_uri(), checksums=good, progress=False)
    assert path == dest / archive.name and path.read_bytes() == archive.read_bytes()

    wrong = {archive.name: ("sha256", "0" * 64)}
    with pytest.raises(OmniglotError, match=r"has sha256 .*expected 0000"):
        download_archive(
            "small1", tmp_path / "d2", url=server.as_uri(), checksums=wrong, progress=False
        )
    assert not list((tmp_path / "d2").iterdir())  # nothing kept

    (server / "images_evaluation.zip").write_bytes(b"not a zip")
    with pytest.raises(OmniglotError, match="not a valid zip"):
        download_archive(
            "evaluation", tmp_path / "d3", url=server.as_uri(), checksums={}, progress=False
        )

    with pytest.raises(
        OmniglotError, match=r"could not download .*put images_background_small2.zip"
    ):
        download_archive(
            "small2", tmp_path / "d4", url=(tmp_path / "nowhere").as_uri(), progress=False
        )


def test_official_checksum_table_covers_every_archive() -> None:
    assert set(om.CHECKSUMS) == {f"{a}.zip" for a in om.ARCHIVES.values()}
    for algorithm, digest in om.CHECKSUMS.values():
        assert len(digest) == {"md5": 32, "sha256": 64}[algorithm]


def test_small_official_checksums_match_local_copies(omniglot_root: Path) -> None:
    # the small archives here are the official files byte for byte (see data README)
    for name in ("images_background_small1.zip", "images_background_small2.zip"):
        algorithm, digest = om.CHECKSUMS[name]
        assert hashlib.new(algorithm, (omniglot_root / name).read_bytes()).hexdigest() == digest
