"""Templates are what they claim: frame count, duration and fps are measured from the packets,
never taken from headers. Files that lie are made with real ffmpeg, uploaded and refused with
INVALID_ARGUMENT and a message a person can act on; nothing already stored changes.
"""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import grpc
import pytest
from remind.v1 import template_service_pb2 as templates_pb2

from services.client import RemindClient
from services.shared import video
from services.shared.storage import ObjectStore

TIMEOUT = 120
# OrchestratorSettings' defaults.
MAX_FRAMES = 3600
MAX_FPS = 60


def _ffmpeg(path: Path, *arguments: str) -> Path:
    subprocess.run(["ffmpeg", "-v", "error", "-y", *arguments, str(path)], check=True)
    return path


def _h264(path: Path, source: str, seconds: float) -> Path:
    return _ffmpeg(
        path, "-f", "lavfi", "-i", source, "-t", f"{seconds:g}",
        "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
    )  # fmt: skip


def claim_duration(mp4: bytes, seconds: float) -> bytes:
    """The MP4 with its movie and media headers (mvhd, mdhd, version 0) claiming `seconds`;
    its packets, and what a player shows, are unchanged."""
    forged = bytearray(mp4)
    for box in (b"mvhd", b"mdhd"):
        at = forged.find(box)
        assert at > 0 and forged[at + 4] == 0, f"{box!r} version 0 expected"
        (timescale,) = struct.unpack_from(">I", forged, at + 16)
        struct.pack_into(">I", forged, at + 20, int(seconds * timescale))
    return bytes(forged)


def _snapshot(store: ObjectStore) -> dict[str, bytes]:
    return {
        f"{bucket}/{key}": store.get_bytes(bucket, key)
        for bucket in ("remind-templates", "remind-records")
        for key in store.list_keys(bucket, "")
        if bucket == "remind-templates" or "/templates/" in key
    }


def _create(client: RemindClient, data: bytes, filename: str) -> grpc.RpcError:
    media = client.upload(data, filename).name
    with pytest.raises(grpc.RpcError) as raised:
        client.templates.CreateTemplate(
            templates_pb2.CreateTemplateRequest(media=media, template_id="liar"), timeout=TIMEOUT
        )
    return raised.value


def test_ten_minute_mp4_whose_header_says_five_seconds_is_measured(tmp_path: Path) -> None:
    honest = _h264(tmp_path / "long.mp4", "color=c=gray:size=64x64:rate=25", 600)
    lying = tmp_path / "lying.mp4"
    lying.write_bytes(claim_duration(honest.read_bytes(), 5))
    header = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0",
         str(lying)],
        capture_output=True, check=True, text=True,
    ).stdout  # fmt: skip
    assert float(header) == 5.0, "the header lies"

    info = video.probe(lying, max_frames=MAX_FRAMES)
    assert info.frame_count == MAX_FRAMES + 1, "counting stops one past the limit"
    assert abs(video.probe(lying).duration_seconds - 600) < 0.1, "the packets tell the truth"


LIARS = {
    # Header: 5 s. Packets: 600 s, 15,000 frames.
    "ten-minute-mp4-whose-header-says-five-seconds": (
        lambda work: claim_duration(
            _h264(work / "a.mp4", "color=c=gray:size=64x64:rate=25", 600).read_bytes(), 5
        ),
        "t.mp4",
        f"more than {MAX_FRAMES:,} frames",
    ),
    "three-seconds-at-1000-fps": (
        lambda work: _h264(work / "b.mp4", "testsrc=size=64x64:rate=1000", 3).read_bytes(),
        "t.mp4",
        "1,000 frames per second",
    ),
    "twenty-minute-gif": (
        lambda work: _ffmpeg(
            work / "c.gif", "-f", "lavfi", "-i", "color=c=gray:size=32x32:rate=10", "-t", "1200"
        ).read_bytes(),
        "t.gif",
        f"more than {MAX_FRAMES:,} frames",
    ),
    # 1080p at 50 fps for 50 s: 2,500 frames, 5.2 billion pixels in all.
    "fifty-seconds-of-1080p-at-50-fps": (
        lambda work: _h264(work / "d.mp4", "color=c=gray:size=1920x1080:rate=50", 50).read_bytes(),
        "t.mp4",
        "billion pixels",
    ),
}


@pytest.mark.parametrize("name", list(LIARS))
def test_template_that_lies_is_refused_and_nothing_stored_changes(
    client: RemindClient, store: ObjectStore, tmp_path: Path, name: str
) -> None:
    make, filename, words = LIARS[name]
    upload = make(tmp_path)
    before = _snapshot(store)

    error = _create(client, upload, filename)

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert words in error.details(), error.details()
    assert _snapshot(store) == before
    assert "templates/liar" not in [t.name for t in client.list_templates()]


def test_built_in_templates_pass_the_measured_limits(client: RemindClient) -> None:
    for template in client.list_templates():
        assert 0 < template.frame_count <= MAX_FRAMES, template.name
        assert 0 < template.fps <= MAX_FPS, template.name
        assert abs(template.frame_count / template.fps - template.duration_seconds) < 0.05
