"""The SimSwap engine in process on random weights in the official formats; batching; files."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from services.faceswap.config import FaceSwapSettings
from services.faceswap.engines.base import FaceIdentity
from services.faceswap.engines.registry import engine_factories
from services.faceswap.engines.simswap import SimSwapEngine, decode_identity
from services.faceswap.simswap import files
from services.faceswap.simswap.alignment import aligned_crop
from services.faceswap.simswap.paste_back import paste_back
from services.shared.batching import Batcher, then
from services.shared.engine_catalog import EngineCatalog
from services.shared.errors import EngineNotReady, InvalidInput
from services.shared.model_files import MANIFEST_NAME, ModelFile, check_files, record_files
from tests.test_simswap_reference import build_models_dir


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_models_dir(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def engine(models_dir: Path):
    loaded = SimSwapEngine(FaceSwapSettings(models_dir=str(models_dir), batch_max_wait_ms=50))
    loaded.load()
    yield loaded
    loaded.close()


def test_simswap_is_preferred_when_ready_and_auto_falls_back_without_weights(
    models_dir, tmp_path
):
    factories = engine_factories(FaceSwapSettings(models_dir=str(tmp_path / "empty")))
    assert next(iter(factories)) == "simswap"
    catalog = EngineCatalog(factories, tuple(factories))
    catalog.load_all()
    status = {s.name: s for s in catalog.statuses()}
    assert not status["simswap"].ready and "missing" in status["simswap"].detail
    assert catalog.default_name() == "landmark_warp"
    catalog.close()


def test_identity_is_a_unit_embedding_without_pickle(engine, user_photo):
    identity = engine.prepare_identity(user_photo)
    embedding, resolution = decode_identity(identity, "simswap")
    assert identity.engine == "simswap" and resolution == 224
    assert embedding.shape == (512,)
    assert np.linalg.norm(embedding) == pytest.approx(1.0, abs=1e-4)
    again, _ = decode_identity(engine.prepare_identity(user_photo), "simswap")
    np.testing.assert_array_equal(embedding, again)


def test_frames_of_a_stream_are_batched_and_pasted_inside_the_face(engine, user_photo):
    identity = engine.prepare_identity(user_photo)
    swapper = engine.start_stream(identity)
    frames = [np.roll(user_photo, shift, axis=1) for shift in (0, 4, 8)]
    before = len(engine.batcher.batch_sizes)
    pending = [swapper.submit(frame) for frame in frames]
    results = [future.result(timeout=120) for future in pending]
    assert max(engine.batcher.batch_sizes[before:]) > 1, "frames shared a forward pass"
    for frame, result in zip(frames, results, strict=True):
        assert result.face_found and result.image.shape == frame.shape
        changed = np.abs(result.image.astype(int) - frame.astype(int)).max(axis=2) > 0
        ys, xs = np.nonzero(changed)
        assert len(ys) > 1000
        x, y, width, height = result.box
        margin_x, margin_y = width, height  # the official crop is about twice the face box
        assert xs.min() >= x - margin_x and xs.max() <= x + width + margin_x
        assert ys.min() >= y - margin_y and ys.max() <= y + height + margin_y


def test_a_frame_without_a_face_passes_through(engine, user_photo):
    swapper = engine.start_stream(engine.prepare_identity(user_photo))
    blank = np.full((120, 160, 3), 90, dtype=np.uint8)
    result = swapper.submit(blank).result(timeout=10)
    assert not result.face_found and result.image is blank


def test_identities_of_other_engines_or_corrupt_state_are_refused(engine):
    with pytest.raises(InvalidInput, match="prepared by engine"):
        engine.start_stream(FaceIdentity("landmark_warp", b"x", (0, 0, 1, 1), 1.0))
    with pytest.raises(InvalidInput, match="corrupt"):
        engine.start_stream(FaceIdentity("simswap", b"not an npz", (0, 0, 1, 1), 1.0))


def test_altered_or_missing_weights_refuse_to_load(models_dir, tmp_path):
    altered = tmp_path / "models"
    for model_file in (files.ARCFACE, files.GENERATOR_224):
        target = altered / model_file.path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((models_dir / model_file.path).read_bytes())
    (altered / MANIFEST_NAME).write_bytes((models_dir / MANIFEST_NAME).read_bytes())
    generator = altered / files.GENERATOR_224.path
    data = bytearray(generator.read_bytes())
    data[-100] ^= 0xFF
    generator.write_bytes(bytes(data))
    engine = SimSwapEngine(FaceSwapSettings(models_dir=str(altered)))
    with pytest.raises(EngineNotReady, match="SHA-256"):
        engine.load()
    assert engine.models is None, "nothing half-loaded"
    generator.unlink()
    with pytest.raises(EngineNotReady, match="missing"):
        engine.load()


def test_model_files_are_recorded_and_checked(tmp_path):
    weights = tmp_path / "engine" / "weights.bin"
    weights.parent.mkdir()
    weights.write_bytes(b"weights")
    listed = [
        ModelFile("engine/weights.bin", "https://example.invalid/w", "MIT"),
        ModelFile("engine/optional.bin", "https://example.invalid/o", "MIT", required=False),
    ]
    record_files(tmp_path, listed)
    assert set(check_files(tmp_path, listed)) == {"engine/weights.bin"}
    weights.write_bytes(b"tampered")
    with pytest.raises(EngineNotReady, match="expected"):
        check_files(tmp_path, listed)
    pinned = [replace(listed[0], sha256="0" * 64)]
    with pytest.raises(EngineNotReady, match="expected"):
        check_files(tmp_path, pinned)
    weights.write_bytes(b"")
    with pytest.raises(EngineNotReady, match="empty"):
        check_files(tmp_path, listed)


def test_batcher_groups_concurrent_items_and_keeps_their_order():
    seen: list[list[int]] = []

    def double(items):
        seen.append(list(items))
        time.sleep(0.05)
        return [2 * item for item in items]

    batcher = Batcher(double, max_batch_size=4, max_wait_seconds=0.05)
    futures: dict[int, object] = {}

    def submit(start: int) -> None:
        for item in range(start, start + 5):
            futures[item] = batcher.submit(item)

    threads = [threading.Thread(target=submit, args=(start,)) for start in (0, 100)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert {item: future.result(timeout=5) for item, future in futures.items()} == {
        item: 2 * item for item in futures
    }
    assert max(len(batch) for batch in seen) > 1
    assert all(len(batch) <= 4 for batch in seen)
    assert then(batcher.submit(21), lambda value: value + 1).result(timeout=5) == 43
    batcher.close()


def test_a_failing_batch_fails_each_of_its_items():
    def broken(items):
        raise ValueError("boom")

    batcher = Batcher(broken, max_batch_size=2, max_wait_seconds=0.0)
    with pytest.raises(ValueError, match="boom"):
        batcher.submit(1).result(timeout=5)
    batcher.close()


def test_paste_back_blends_without_a_seam(user_photo):
    alignment = np.array([[1.2, 0.1, -60.0], [-0.1, 1.2, -40.0]])
    crop = aligned_crop(user_photo, alignment, 224)
    swapped = np.clip(crop.astype(int) + 40, 0, 255).astype(np.uint8)
    pasted = paste_back(user_photo, swapped, crop, alignment)
    difference = np.abs(pasted.image.astype(int) - user_photo.astype(int)).max(axis=2)
    x, y, width, height = pasted.box
    outside = difference.copy()
    outside[y : y + height, x : x + width] = 0
    assert outside.max() == 0
    # The mask feathers: along a row through the box the change rises gradually.
    row = difference[y + height // 2, x : x + width].astype(float)
    assert np.abs(np.diff(row)).max() < 12
