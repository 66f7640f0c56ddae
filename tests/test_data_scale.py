"""Data at scale: the sharded prepared format, parallel prepare, and training that streams from the
shards with exactly the batches (and so the weights) of training from memory."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import conftest
from ganops import GanopsError
from ganops.data import DataError, load_manifest, load_split, open_split
from ganops.stages.prepare import prepare
from ganops.stages.train import train
from ganops.training.loop import BatchStream


def tiny(data: dict | None = None, train: dict | None = None):
    """Tiny params with these data and train overrides (this file changes little else)."""
    return conftest.tiny({"data": data or {}, "train": train or {}})


def tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.stage
def test_shards_hold_the_split_in_order_whatever_their_size(tmp_path):
    one = prepare(tiny({"shard_size": 8192}), tmp_path / "one")
    many = prepare(tiny({"shard_size": 100}), tmp_path / "many")
    assert len(one.files["train"].shards) == 1
    assert [s.count for s in many.files["train"].shards] == [100] * 16 + [many.num_train - 1600]
    prepared = tmp_path / "many" / "data" / "prepared"
    images, labels = load_split(prepared, "train")
    expected_images, expected_labels = load_split(tmp_path / "one" / "data" / "prepared", "train")
    assert np.array_equal(images, expected_images) and np.array_equal(labels, expected_labels)
    split = open_split(prepared, "train")
    assert np.array_equal(split.read(95, 305), images[95:305])  # across three shards
    picks = np.random.default_rng(0).integers(0, len(split), 300)
    assert np.array_equal(split.gather(picks), images[picks])
    batches = list(split.batches(250))
    assert np.array_equal(np.concatenate([b for b, _ in batches]), images)
    # the split's digest is over its shards: equal content in other shards is another digest
    assert one.checksum("train") != many.checksum("train")
    # each shard's sha256 (computed while writing) is that of its two files' bytes, read back
    for shard in many.files["train"].shards:
        read_back = hashlib.sha256((prepared / shard.images).read_bytes() + (prepared / shard.labels).read_bytes())
        assert shard.sha256 == "sha256:" + read_back.hexdigest()
    assert many.checksum("train") == prepare(tiny({"shard_size": 100}), tmp_path / "again").checksum("train")


@pytest.mark.stage
def test_a_damaged_shard_is_a_clear_error(tmp_path):
    prepare(tiny({"shard_size": 500}), tmp_path)
    prepared = tmp_path / "data" / "prepared"
    shard = prepared / "train" / "images-00001.npy"
    whole = shard.read_bytes()
    shard.write_bytes(whole[:-64])
    with pytest.raises(DataError, match="images-00001.npy: its bytes have sha256 .* the shard changed after prepare"):
        load_split(prepared, "train")
    with pytest.raises(DataError, match="images-00001.npy: its bytes have sha256"):
        open_split(prepared, "train").gather(np.array([999]))  # the last image of shard 1, as training reads it
    shard.write_bytes(whole)
    (prepared / "train" / "images-00002.npy").unlink()
    with pytest.raises(DataError, match="images-00002.npy"):
        load_split(prepared, "train")


@pytest.mark.stage
def test_a_shard_changed_in_place_trains_nothing(tmp_path):
    """Same size, one pixel changed: every checksum downstream would still name the original data."""
    prepare(tiny({"shard_size": 500}), tmp_path)
    prepared = tmp_path / "data" / "prepared"
    shard = prepared / "train" / "images-00002.npy"
    changed = bytearray(shard.read_bytes())
    changed[-1] ^= 0xFF
    shard.write_bytes(bytes(changed))
    with pytest.raises(DataError, match="images-00002.npy: its bytes have sha256"):
        open_split(prepared, "train").read(1000, 1010)  # a range inside shard 2
    assert open_split(prepared, "train").read(0, 10).shape[0] == 10  # the intact shards still read
    with pytest.raises(DataError, match="images-00002.npy: its bytes have sha256"):
        assert open_split(prepared, "train").labels is None  # the labels need every shard: all are checked
    with pytest.raises(GanopsError, match="the shard changed after prepare"):
        train(tiny(), tmp_path)
    with pytest.raises(GanopsError, match="the shard changed after prepare"):
        train(tiny(train={"in_memory_max_mb": 0}), tmp_path)  # streamed from the shards too


@pytest.mark.stage
def test_a_manifest_cannot_point_outside_its_folder(tmp_path):
    import json

    prepare(tiny(), tmp_path)
    path = tmp_path / "data" / "prepared" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["files"]["train"]["shards"][0]["images"] = "../../../etc/passwd"
    path.write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="is not of the form <split>/images-NNNNN.npy"):
        load_manifest(tmp_path / "data" / "prepared")


@pytest.mark.stage
def test_a_manifest_of_the_earlier_format_asks_for_a_new_prepare(tmp_path):
    prepare(tiny(), tmp_path)
    manifest = tmp_path / "data" / "prepared" / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"version": 2', '"version": 1'))
    with pytest.raises(DataError, match="format 1; this ganops reads format 2: run `dvc repro -f prepare`"):
        load_manifest(tmp_path / "data" / "prepared")


def _digit_folder(root: Path, count: int) -> Path:
    from sklearn.datasets import load_digits

    digits = load_digits()
    for i in range(count):
        folder = root / f"class{digits.target[i % len(digits.target)]}"
        folder.mkdir(parents=True, exist_ok=True)
        image = (digits.images[i % len(digits.images)] * 15).astype(np.uint8)
        Image.fromarray(np.roll(image, i // len(digits.images), axis=1)).save(folder / f"{i:05d}.png")
    return root


@pytest.mark.stage
def test_parallel_prepare_writes_what_one_process_writes(tmp_path):
    raw = _digit_folder(tmp_path / "raw", 700)  # above the count where workers start
    data = {"source": "imagefolder", "path": str(raw), "shard_size": 128}
    serial = prepare(tiny({**data, "workers": 1}), tmp_path / "serial")
    parallel = prepare(tiny({**data, "workers": 2}), tmp_path / "parallel")
    assert serial.num_train + serial.num_test == 700 and len(serial.files["train"].shards) == 5
    assert tree(tmp_path / "serial" / "data" / "prepared") == tree(tmp_path / "parallel" / "data" / "prepared")
    assert parallel.source_checksum == serial.source_checksum

    # a corrupt file stops a parallel prepare with its name, and the previous output stays
    bad = raw / "class0" / "00000.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(DataError, match="00000.png: corrupt or truncated image"):
        prepare(tiny({**data, "workers": 2}), tmp_path / "parallel")
    assert load_manifest(tmp_path / "parallel" / "data" / "prepared") == parallel
    skipped = prepare(tiny({**data, "workers": 2, "skip_invalid": True}), tmp_path / "parallel")
    assert skipped.skipped["count"] == 1 and skipped.num_train + skipped.num_test == 699


def test_ranks_read_disjoint_shares_of_every_epoch():
    for epoch in range(3):
        seen = []
        for rank in range(2):
            stream = BatchStream(100, 10, seed=0, rank=rank, world_size=2)
            stream.load_state_dict({"epoch": epoch, "position": 0})
            seen.append({int(i) for _ in range(5) for i in stream.next()})
        assert not seen[0] & seen[1] and len(seen[0]) == len(seen[1]) == 50


@pytest.mark.stage
def test_training_from_the_shards_gives_the_weights_of_training_from_memory(tmp_path):
    prepare(tiny({"shard_size": 300}), tmp_path / "data-root")
    weights = {}
    for name, limit in (("held", 2048.0), ("streamed", 0.0)):
        root = tmp_path / name
        shutil.copytree(tmp_path / "data-root" / "data", root / "data")
        weights[name] = train(tiny({"shard_size": 300}, {"in_memory_max_mb": limit}), root)["weights_sha256"]
        assert (root / "models" / "generator.safetensors").exists()
    assert weights["held"] == weights["streamed"]


@pytest.mark.stage
def test_batch_larger_than_a_streamed_split_is_a_clear_error(tmp_path):
    prepare(tiny(), tmp_path)
    with pytest.raises(GanopsError, match="larger than the"):
        train(tiny(train={"batch_size": 4096, "in_memory_max_mb": 0.0}), tmp_path)


class PixelFeatures:
    """A backbone whose features are the first 24 pixels: enough to check the arithmetic exactly."""

    name = feature_space = "pixels"
    native_size = None

    def __call__(self, images_u8):
        return images_u8.flatten(1)[:, :24].double() / 255


@pytest.mark.stage
def test_reference_statistics_over_all_images_with_a_bounded_subset_of_features(tmp_path):
    from ganops.metrics.frechet import feature_statistics
    from ganops.metrics.reference import split_features

    prepare(tiny({"shard_size": 256, "resolution": 8}), tmp_path)
    split = open_split(tmp_path / "data" / "prepared", "train")
    everything = PixelFeatures()(__import__("torch").from_numpy(split.load()[0])).numpy()
    mu, sigma = feature_statistics(everything)

    whole = split_features(PixelFeatures(), split, 100, max_features=len(split), desc="all")
    assert np.array_equal(whole.features, everything) and np.array_equal(whole.mu, mu) and np.array_equal(whole.sigma, sigma)

    bounded = split_features(PixelFeatures(), split, 100, max_features=300, desc="subset")
    assert bounded.features.shape == (300, 24) and bounded.record == {"num_reference": len(split), "num_reference_features": 300}
    assert np.allclose(bounded.mu, mu, rtol=0, atol=1e-12) and np.allclose(bounded.sigma, sigma, rtol=0, atol=1e-12)
    rows = {row.tobytes() for row in everything}
    assert all(row.tobytes() in rows for row in bounded.features)  # kept features are real rows, seeded
    again = split_features(PixelFeatures(), split, 64, max_features=300, desc="subset")
    assert np.array_equal(again.features, bounded.features)


def test_the_listing_keeps_the_order_of_sorted_paths(tmp_path):
    """The listing walks with os.walk and keeps relative strings (memory at a million files), in
    exactly the order sorted pathlib Paths had, so a folder prepared before splits the same way."""
    from ganops.data.sources import list_imagefolder

    names = ["b.png", "a-b/y.png", "a/x.png", "a/sub/z.png", "a.b/w.png", "B.png", "a/.hidden.png", "a b/v.png",
             ".dot/u.png", "z/deep/er/t.png", "notes.txt"]
    for label in ("cat", "dog"):
        for name in names:
            path = tmp_path / "raw" / label / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"")
    listing = list_imagefolder(tiny({"source": "imagefolder", "path": str(tmp_path / "raw"), "skip_invalid": True}).data)
    expected = [p.relative_to(tmp_path / "raw").as_posix()
                for label in ("cat", "dog")
                for p in sorted(p for p in (tmp_path / "raw" / label).rglob("*") if p.is_file() and not p.name.startswith("."))
                if p.suffix == ".png"]
    assert listing.files == expected and len(expected) == 18
    assert listing.labels.tolist() == [0] * 9 + [1] * 9


def _png(image: Image.Image, **options) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, "PNG", **options)
    return buffer.getvalue()


def test_fast_png_decoding_gives_pil_pixels_and_pil_errors(tmp_path, monkeypatch):
    """prepare decodes 8-bit gray and RGB PNGs with libspng (pyspng): for every kind of PNG, size and
    target, decode_file returns exactly what the PIL path returns, and a damaged file the same error."""
    from ganops.data import sources

    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8))
    alpha = Image.fromarray(rng.integers(0, 256, (40, 56, 4), dtype=np.uint8), "RGBA")
    kinds = {
        "rgb": _png(rgb), "gray": _png(rgb.convert("L")), "rgb-square": _png(rgb.crop((0, 0, 32, 32))),
        "gray-square": _png(rgb.convert("L").crop((0, 0, 32, 32))), "gray-28": _png(rgb.convert("L").crop((0, 0, 28, 28))),
        "rgb-transparent-key": _png(rgb, transparency=(1, 2, 3)), "palette": _png(rgb.convert("P")),
        "rgba": _png(alpha), "gray-alpha": _png(alpha.convert("LA")), "gray-16": _png(rgb.convert("I;16")),
        "optimized": _png(rgb, optimize=True, compress_level=9),
    }
    full = kinds["rgb-square"]
    kinds.update({f"cut-{n}": full[:n] for n in (20, 40, 60, len(full) // 2, len(full) - 13, len(full) - 1)})
    paths = {}
    for name, data in kinds.items():
        paths[name] = tmp_path / f"{name}.png"
        paths[name].write_bytes(data)
    assert sources._decode_png_fast(kinds["rgb"]) is not None and sources._decode_png_fast(kinds["gray"]) is not None
    assert sources._decode_png_fast(kinds["palette"]) is None and sources._decode_png_fast(kinds["gray-16"]) is None
    for resolution, channels in ((32, 3), (32, 1), (16, 3), (64, 1)):
        fast = {name: sources.decode_file(str(path), resolution, channels) for name, path in paths.items()}
        with monkeypatch.context() as patch:
            patch.setattr(sources, "_decode_png_fast", lambda data: None)
            slow = {name: sources.decode_file(str(path), resolution, channels) for name, path in paths.items()}
        for name in kinds:
            (a, a_problem, a_digest), (b, b_problem, b_digest) = fast[name], slow[name]
            assert a_problem == b_problem and a_digest == b_digest, name
            assert (a is None and b is None) or np.array_equal(a, b), (name, resolution, channels)
    assert fast["cut-40"][1].startswith("corrupt or truncated image")


@pytest.mark.stage
def test_a_file_changed_in_place_reprepares_only_its_shard(tmp_path, monkeypatch):
    """prepare again after one file changed: only that file's shard is decoded again, the others are
    taken from the previous data/prepared/, and the result is byte for byte a fresh prepare's."""
    from ganops.data import prepare as prepare_module

    raw = _digit_folder(tmp_path / "raw", 700)
    data = {"source": "imagefolder", "path": str(raw), "shard_size": 128, "workers": 1}
    first = prepare(tiny(data), tmp_path / "project")
    decoded = []
    real_decode = prepare_module.decode_file
    monkeypatch.setattr(prepare_module, "decode_file", lambda path, **kw: decoded.append(path) or real_decode(path, **kw))
    prepare(tiny(data), tmp_path / "project")
    assert decoded == []  # nothing changed: every shard reused
    monkeypatch.setattr(prepare_module, "decoder_digest", lambda: "another version of the decoding code")
    prepare(tiny(data), tmp_path / "project")
    assert len(decoded) == 700  # other decoding code: nothing reused
    monkeypatch.undo()
    monkeypatch.setattr(prepare_module, "decode_file", lambda path, **kw: decoded.append(path) or real_decode(path, **kw))
    prepare(tiny(data), tmp_path / "project")
    decoded.clear()

    changed = raw / "class3" / "00003.png"
    Image.fromarray(np.full((8, 8), 200, dtype=np.uint8)).save(changed)
    second = prepare(tiny(data), tmp_path / "project")
    assert str(changed) in decoded and 0 < len(decoded) <= 128
    differing = [a.images for split in ("train", "test")
                 for a, b in zip(first.files[split].shards, second.files[split].shards) if a.sha256 != b.sha256]
    assert len(differing) == 1 and second.source_checksum != first.source_checksum

    fresh = prepare(tiny(data), tmp_path / "fresh")
    assert second == fresh
    assert tree(tmp_path / "project" / "data" / "prepared") == tree(tmp_path / "fresh" / "data" / "prepared")

    # a prepared shard changed in place is not reused: its files are decoded again
    tampered = tmp_path / "project" / "data" / "prepared" / second.files["train"].shards[1].images
    damaged = bytearray(tampered.read_bytes())
    damaged[-1] ^= 0xFF
    tampered.write_bytes(bytes(damaged))
    decoded.clear()
    assert prepare(tiny(data), tmp_path / "project") == fresh
    assert len(decoded) == 128
    assert tree(tmp_path / "project" / "data" / "prepared") == tree(tmp_path / "fresh" / "data" / "prepared")

    # a skipped file is skipped (and listed) again when its shard is reused; without skip_invalid it stops prepare
    (raw / "class5" / "00005.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    skipping = tiny({**data, "skip_invalid": True})
    with_skip = prepare(skipping, tmp_path / "project")
    decoded.clear()
    assert prepare(skipping, tmp_path / "project") == with_skip and decoded == []
    assert with_skip.skipped["count"] == 1 and "00005.png: corrupt or truncated image" in with_skip.skipped["files"][0]
    with pytest.raises(DataError, match="00005.png: corrupt or truncated image"):
        prepare(tiny(data), tmp_path / "project")
