"""Ids across video frames: each object keeps one track id (and so one colour) while it moves.

IoU matching of boxes with a constant-velocity guess, one class at a time, greedy by overlap.
supervision's ByteTrack was considered: it pulls in opencv-python beside our
opencv-python-headless (two packages writing the same cv2), and Mask R-CNN's per-class NMS
already leaves one box per object, which is the case ByteTrack's second, low-score pass is for.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from maskseg.engine.prediction import Instance, Prediction

Box = tuple[float, float, float, float]


def box_iou(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """IoU of every box in `first` (N×4, x1 y1 x2 y2) with every box in `second` (M×4): N×M."""
    if len(first) == 0 or len(second) == 0:
        return np.zeros((len(first), len(second)), dtype=np.float64)
    x1 = np.maximum(first[:, None, 0], second[None, :, 0])
    y1 = np.maximum(first[:, None, 1], second[None, :, 1])
    x2 = np.minimum(first[:, None, 2], second[None, :, 2])
    y2 = np.minimum(first[:, None, 3], second[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (first[:, 2] - first[:, 0]) * (first[:, 3] - first[:, 1])
    area_b = (second[:, 2] - second[:, 0]) * (second[:, 3] - second[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-9), 0.0)


@dataclass
class Track:
    """One object followed over frames: its id, class, last box and motion per frame."""

    id: int
    class_name: str
    box: np.ndarray
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(4))
    missed: int = 0  # frames since it was last seen

    def predicted_box(self) -> np.ndarray:
        """Where it should be now, if it kept moving as it did."""
        return self.box + self.velocity * (self.missed + 1)


class IouTracker:
    """Gives every detection a track id; an object keeps its id from frame to frame.

    A detection joins the track of the same class whose predicted box overlaps it most (IoU at
    least `iou_threshold`); the rest start new tracks. A track not seen for `max_missed` frames
    ends, and its id is never reused.
    """

    def __init__(self, iou_threshold: float = 0.3, max_missed: int = 10) -> None:
        self.iou_threshold = iou_threshold
        self.max_missed = max_missed
        self.tracks: list[Track] = []
        self._next_id = 1

    def update(self, boxes: list[Box], class_names: list[str]) -> list[int]:
        """Track ids for this frame's detections, in their order."""
        detections = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        predicted = np.asarray([t.predicted_box() for t in self.tracks], dtype=np.float64).reshape(-1, 4)
        overlap = box_iou(predicted, detections)
        same_class = np.array(
            [[t.class_name == name for name in class_names] for t in self.tracks], dtype=bool
        ).reshape(len(self.tracks), len(class_names))
        overlap = np.where(same_class, overlap, 0.0)
        ids: list[int | None] = [None] * len(detections)
        matched: set[int] = set()
        # Greedy by overlap, best pair first: with one box per object this equals the optimum.
        for flat in np.argsort(-overlap, axis=None):
            track_index, det_index = np.unravel_index(flat, overlap.shape)
            if overlap[track_index, det_index] < self.iou_threshold:
                break
            if track_index in matched or ids[det_index] is not None:
                continue
            matched.add(int(track_index))
            ids[det_index] = self._follow(self.tracks[track_index], detections[det_index])
        for index, name in enumerate(class_names):
            if ids[index] is None:
                ids[index] = self._start(name, detections[index])
        survivors = []
        for index, track in enumerate(self.tracks):
            if index not in matched and track.id not in ids:
                track.missed += 1
            if track.missed <= self.max_missed:
                survivors.append(track)
        self.tracks = survivors
        return [int(i) for i in ids]

    def _follow(self, track: Track, box: np.ndarray) -> int:
        step = (box - track.box) / (track.missed + 1)
        track.velocity = 0.5 * track.velocity + 0.5 * step
        track.box = box
        track.missed = 0
        return track.id

    def _start(self, class_name: str, box: np.ndarray) -> int:
        track = Track(self._next_id, class_name, box)
        self._next_id += 1
        self.tracks.append(track)
        return track.id


def with_track_ids(view: Prediction, track_ids: list[int]) -> Prediction:
    """The same objects and masks with track ids as their ids, so colours and tables follow tracks.

    Each object carries its head's 28×28 probabilities, so its mask is pasted exactly as before.
    """
    instances: list[Instance] = []
    for inst, track_id in zip(view.instances, track_ids):
        probabilities = inst.mask_probabilities
        if probabilities is None and view.mask_head is not None:
            probabilities = view.mask_head.probabilities(inst.id - 1)
        instances.append(replace(inst, id=track_id, mask_probabilities=probabilities))
    return Prediction(
        image=view.image, image_name=view.image_name, instances=instances, score_floor=view.score_threshold,
        score_threshold=view.score_threshold, mask_threshold=view.mask_threshold,
        model_title=view.model_title, device_name=view.device_name,
        inference_seconds=view.inference_seconds, class_names=view.class_names,
    )


def track_prediction(tracker: IouTracker, view: Prediction) -> Prediction:
    """`view` with each object's track id from `tracker` (which it advances by one frame)."""
    ids = tracker.update([inst.box for inst in view.instances], [inst.class_name for inst in view.instances])
    return with_track_ids(view, ids)
