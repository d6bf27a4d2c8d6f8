"""The tracked frames' alpha: the head and the rig's neck, from a segmentation of the whole person and the fitted mesh.

Pure numpy and scipy: mediapipe is not needed to test how its segmentation is
combined with the fitted mesh.
"""

import numpy as np
from scipy.ndimage import gaussian_filter

from emotalker.track.matting import below_chin, chin_and_crown, guided_filter, head_alpha

SIZE = 128


def disc(cx: float, cy: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] + 0.5
    return (xx - cx) ** 2 + (yy - cy) ** 2 < r * r


def person_scene():
    """A head (disc) over a torso (a box below it) on grey; the segmentation is the person, soft-edged."""
    head = disc(64, 50, 30)
    torso = np.zeros_like(head)
    torso[95:, 20:108] = True
    rgb = np.full((SIZE, SIZE, 3), 128, np.uint8)
    rgb[torso] = (60, 60, 160)
    rgb[head] = (225, 180, 150)
    segmentation = np.clip(gaussian_filter((head | torso).astype(np.float32), 1.0), 0, 1)
    return rgb, head, torso, segmentation


def test_torso_goes_and_the_edge_is_the_segmentations_not_a_too_large_fits():
    rgb, head, torso, segmentation = person_scene()
    silhouette = disc(64, 50, 33)  # the fit's head: 3 px too large all round
    alpha = head_alpha(rgb, segmentation, silhouette, chin=np.array([64.0, 80.0]), crown=np.array([64.0, 20.0]))
    assert alpha.dtype == np.float32 and alpha.shape == (SIZE, SIZE)
    assert alpha[torso].max() < 0.05  # the shoulders are not the avatar's
    assert alpha[disc(64, 50, 28)].min() > 0.95
    ring = disc(64, 50, 33) & ~disc(64, 50, 31)  # inside the fit, outside the head
    assert alpha[ring].mean() < 0.1
    error = np.abs(alpha - head).mean()
    old = np.abs(np.maximum(silhouette, segmentation * ~torso) - head).mean()  # the fit's silhouette as the edge
    assert error < 0.3 * old


def test_without_a_silhouette_nothing_is_foreground():
    rgb, _, _, segmentation = person_scene()
    alpha = head_alpha(rgb, segmentation, np.zeros((SIZE, SIZE), bool), np.array([64.0, 80.0]), np.array([64.0, 20.0]))
    assert not alpha.any()


def test_below_chin_follows_the_heads_tilt():
    d = below_chin((SIZE, SIZE), chin=np.array([64.0, 80.0]), crown=np.array([4.0, 80.0]))  # lying on its side
    assert d[80, 100] > 30 and d[80, 30] < -30  # down is +x
    assert abs(d[10, 64] - d[120, 64]) < 1e-9  # the chin line runs along y


def test_guided_filter_shrinks_the_composites_error_of_a_too_wide_alpha():
    """Where an alpha is wrong by a pixel or two round the edge, the filter makes it wrong where the frame's colour
    changes least, so the frame composited over white is nearer the truth (the halo of background fades)."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] + 0.5
    r = np.hypot(xx - 64, yy - 64)
    true = np.clip(30.5 - r, 0, 1)
    skin, grey = np.array([0.88, 0.7, 0.59]), np.array([0.5, 0.5, 0.5])
    frame = true[..., None] * skin + (1 - true[..., None]) * grey
    truth_over_white = true[..., None] * skin + (1 - true[..., None])
    for wider in (1, 2, 3):
        alpha = np.clip(gaussian_filter(np.clip(30.5 + wider - r, 0, 1), 1.0), 0, 1)
        filtered = np.clip(guided_filter(frame @ np.array([0.299, 0.587, 0.114]), alpha, 2, 1e-4), 0, 1)
        error = [((frame * a[..., None] + 1 - a[..., None] - truth_over_white) ** 2).sum() for a in (alpha, filtered)]
        assert error[1] < 0.75 * error[0]


def test_chin_and_crown_on_the_procedural_head():
    from emotalker.core.head import make_head

    model = make_head(0)
    chin, crown = chin_and_crown(model)
    v = model.v_template
    assert v[crown, 1] == v[:, 1].max()
    assert model.weights[chin, 2] > 0.5  # the jaw moves it
    assert v[chin, 2] > np.median(v[:, 2])  # at the front of the head, not the back of the neck
