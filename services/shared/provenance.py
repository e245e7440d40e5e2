"""Is this file a Re:Mind output? Both marks every result carries, checked in one place: its
signed Content Credentials (which any C2PA tool reads, and which re-encoding removes) and the
invisible watermark (which survives re-encoding, and which only this verifier reads).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from services.shared import images, video, watermark
from services.shared.content_credentials import VALID, CredentialsReport, read_credentials
from services.shared.errors import InvalidInput

# The watermark's combined score grows with the frames read; this many make it certain for
# any of our outputs (a 3 s GIF scores in the tens) and bound the work for a long video.
MAX_WATERMARK_FRAMES = 120
MAX_STILL_PIXELS = 40_000_000
VERIFIABLE = "GIF, MP4, PNG, JPEG or WebP"


@dataclass(frozen=True)
class MediaVerdict:
    credentials: CredentialsReport
    watermark: watermark.Verdict

    @property
    def marked(self) -> bool:
        """Either mark says the file was made by Re:Mind."""
        return self.credentials.state == VALID or self.watermark.watermarked


def content_type_of(head: bytes) -> str:
    """The media type from a file's first bytes; InvalidInput for anything we cannot verify."""
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if head[4:8] == b"ftyp":
        return "video/mp4"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"\xff\xd8"):
        return "image/jpeg"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    raise InvalidInput(f"Only {VERIFIABLE} files can be verified.")


def verify_media(path: Path, trust_anchors: str = "") -> MediaVerdict:
    with open(path, "rb") as media:
        content_type = content_type_of(media.read(16))
        media.seek(0)
        credentials = read_credentials(media, content_type, trust_anchors)
    if content_type in ("image/gif", "video/mp4"):
        verdict = watermark.verify(itertools.islice(_readable_frames(path), MAX_WATERMARK_FRAMES))
    else:
        verdict = watermark.verify([images.decode_image(path.read_bytes(), MAX_STILL_PIXELS)])
    return MediaVerdict(credentials, verdict)


def _readable_frames(path: Path) -> Iterator[np.ndarray]:
    """The frames up to the first damaged one: a damaged file still shows its watermark."""
    try:
        yield from video.iter_frames(path)
    except InvalidInput:
        return
