"""A browser session's state: the cached prediction, and the one call that runs the network."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from maskseg.app.controls import Controls
from maskseg.app.view import preview_prediction
from maskseg.engine.images import LoadedImage
from maskseg.engine.prediction import Prediction
from maskseg.engine.segmenter import SCORE_FLOOR, Segmenter


@dataclass
class SessionResult:
    """The per-session cache: the network's full answer for one image, kept down to its floor.

    `preview` is the same answer on a copy of the photo no larger than PREVIEW_MAX_SIDE: live
    re-renders draw on it (the browser shows the overlay smaller than that anyway), while the
    table, the /segment API and the download always use the full-resolution prediction.
    """

    model_value: str
    base: Prediction
    preview: Prediction | None = None

    def preview_base(self) -> Prediction:
        if self.preview is None:
            self.preview = preview_prediction(self.base)
        return self.preview

class NetworkRuns:
    """How many times the app ran the network: tests and benchmarks check sliders never do."""

    def __init__(self) -> None:
        self._count = 0
        self._lock = threading.Lock()

    def add(self, images: int = 1) -> None:
        with self._lock:
            self._count += images

    @property
    def count(self) -> int:
        return self._count

NETWORK_RUNS = NetworkRuns()

def run_network(
    segmenter: Segmenter, image: LoadedImage | np.ndarray, controls: Controls, detached: bool = False
) -> Prediction:
    """Run the network once, keeping everything down to the floor so later filters are free.

    `detached`: compute every candidate's mask now and let the features go, for a run whose answer
    leaves the process (ZeroGPU's worker), where no later mask could be computed.
    """
    floor = min(float(controls.score_threshold), SCORE_FLOOR)
    NETWORK_RUNS.add(1)
    prediction = segmenter.predict_one(
        image, score_threshold=floor, mask_threshold=float(controls.mask_threshold), max_detections=100,
        keep_features=True,  # a lower threshold or another class computes its masks from them
    )
    return prediction.detached() if detached else prediction
