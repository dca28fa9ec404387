"""User-facing errors: each carries one clear sentence that a person can act on."""


class MaskSegError(Exception):
    """A problem the user caused or can fix (bad file, bad flag, missing weights); never a bug."""


class ImageLoadError(MaskSegError):
    """An input could not be read as an image."""


class VideoLoadError(MaskSegError):
    """An input could not be read as a video (not a video, no frames, undecodable, too large or long)."""


class WeightsMissingError(MaskSegError):
    """Model weights are not on this machine and could not be downloaded."""


class CheckpointError(MaskSegError):
    """A checkpoint file is missing, unreadable or not a maskseg checkpoint."""


class UsageError(MaskSegError):
    """A setting is wrong (unknown model, class or device, a value out of range): CLI exit code 2."""
