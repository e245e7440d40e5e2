"""Face boxes across the frames of a stream, as the official inference prepares them: the
detector's box padded (top 0, bottom 10, left 0, right 0 px: `--pads`), then averaged over a
5-frame window (`get_smoothened_boxes`, T=5).

The official window runs from the frame forward (i .. i+4) over a whole video it holds in
memory; a stream holds back only LOOKAHEAD frames, so the window here is centred (i-2 .. i+2),
which also keeps the box from leading the face. Frames without a face are left out of their
neighbours' averages (the official script stops the whole video at such a frame).
"""

from __future__ import annotations

from collections import deque

import numpy as np

PADS = (0, 10, 0, 0)  # top, bottom, left, right
SMOOTHING_WINDOW = 5
LOOKAHEAD = SMOOTHING_WINDOW // 2

Corners = tuple[float, float, float, float]  # x1, y1, x2, y2


def padded_box(box: Corners, frame_shape: tuple[int, ...]) -> Corners:
    """The detector's box with the official pads, clipped to the frame."""
    x1, y1, x2, y2 = box
    top, bottom, left, right = PADS
    height, width = frame_shape[:2]
    return (max(0.0, x1 - left), max(0.0, y1 - top),
            min(float(width), x2 + right), min(float(height), y2 + bottom))  # fmt: skip


class BoxSmoother:
    """Averages each frame's box with its neighbours' once LOOKAHEAD later frames are known."""

    def __init__(self) -> None:
        self.recent: deque[Corners | None] = deque(maxlen=SMOOTHING_WINDOW)

    def add(self, box: Corners | None) -> None:
        self.recent.append(box)

    def smoothed(self, offset_from_newest: int) -> Corners | None:
        """The smoothed box of the frame `offset_from_newest` frames before the newest."""
        position = len(self.recent) - 1 - offset_from_newest
        if position < 0 or self.recent[position] is None:
            return None
        low = max(0, position - LOOKAHEAD)
        window = [box for box in list(self.recent)[low : position + LOOKAHEAD + 1] if box]
        x1, y1, x2, y2 = np.mean(np.array(window), axis=0).tolist()
        return x1, y1, x2, y2
