"""The Rendered viewport's preview lane (blender_addon/preview.py), outside Blender: a real worker
process renders; the lane must hand back a reduced image first, then the full one, drop stale requests
and say why a request has no image."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from bake_fixture import make_tiny_avatar

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from blender_addon.camera import viewport_camera  # noqa: E402
from blender_addon.preview import PreviewLane, PreviewRequest, over, render_frame, scaled  # noqa: E402
from blender_addon.worker_client import WorkerClient, WorkerError  # noqa: E402
from emotalker.core.render.camera import front_camera  # noqa: E402
from emotalker.core.rig.flame import FlameModel  # noqa: E402


@pytest.fixture(scope="module")
def worker():
    client = WorkerClient(sys.executable)
    yield client
    client.close()


@pytest.fixture(scope="module")
def avatar(tmp_path_factory) -> Path:
    return make_tiny_avatar(tmp_path_factory.mktemp("preview") / "avatar")


def frame_request(avatar: Path, cache: Path, frame: int = 1, width: int = 64, height: int = 48, **extra):
    camera = front_camera(FlameModel.load(avatar / "flame_model.npz").v_template, height, width)
    params = {"avatar": str(avatar), "cache": str(cache), "frame": frame, "viewmat": camera.viewmat.tolist(),
              "K": camera.K.tolist(), "width": width, "height": height, "no_emotion": True, **extra}
    return PreviewRequest(width, height, ((1.0, params),))


def wait_for(condition, timeout: float = 120.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "the lane did not deliver in time"
        time.sleep(0.01)


def test_a_reduced_image_first_then_the_full_one_equal_to_the_workers_render(worker, avatar, tmp_path):
    seen = []
    lane = PreviewLane(lambda: worker, on_image=lambda: seen.append(lane.image()), scale=4)
    try:
        req = frame_request(avatar, tmp_path / "lane")
        lane.request(req)
        wait_for(lambda: lane.image() is not None and lane.image().final)
    finally:
        lane.close()
    assert [(im.final, im.pixels.shape) for im in seen] == [(False, (12, 16, 4)), (True, (48, 64, 4))]
    assert all(im.key == req.key for im in seen) and seen[0].version < seen[1].version
    direct = render_frame(worker, {**req.layers[0][1], "cache": str(tmp_path / "direct")})
    assert np.array_equal(seen[1].pixels, direct) and direct[..., 3].max() > 0.5
    # The same request again costs nothing: no render is started.
    lane2 = PreviewLane(lambda: worker, on_image=lambda: seen.append(lane2.image()))
    try:
        lane2.request(req)
        wait_for(lambda: lane2.image() is not None and lane2.image().final)
        n = len(seen)
        lane2.request(frame_request(avatar, tmp_path / "lane"))
        time.sleep(0.3)
        assert len(seen) == n
    finally:
        lane2.close()


class GatedWorker:
    """A stand-in worker whose every render waits for the test to open the gate, recording what it was
    asked for: the lane's scheduling (which requests it sends) is what is under test here."""

    def __init__(self):
        self.calls: list[tuple[int, int]] = []
        self.gate = threading.Semaphore(0)

    def call(self, method, params, timeout=None, read=(), write=()):
        self.calls.append((params["frame"], params["width"]))
        assert self.gate.acquire(timeout=30)
        if params["frame"] == 13:
            raise WorkerError("frame 13 is outside the curves' frames 1..12", "input")
        path = Path(params["cache"]) / f"f{params['frame']}_{params['width']}.rgba"
        path.parent.mkdir(parents=True, exist_ok=True)
        np.full((params["height"], params["width"], 4), params["frame"], np.float32).tofile(path)
        return {"path": str(path), "width": params["width"], "height": params["height"]}


def test_stale_requests_are_dropped_and_failures_are_reported(avatar, tmp_path):
    gated = GatedWorker()
    lane = PreviewLane(lambda: gated, scale=4)
    try:
        lane.request(frame_request(avatar, tmp_path, frame=1))
        wait_for(lambda: len(gated.calls) == 1)
        for frame in (2, 3, 4):  # scrubbing on while frame 1's preview renders
            lane.request(frame_request(avatar, tmp_path, frame=frame))
        gated.gate.release()  # frame 1's preview
        wait_for(lambda: len(gated.calls) == 2)
        gated.gate.release()  # frame 4's preview
        wait_for(lambda: len(gated.calls) == 3)
        gated.gate.release()  # frame 4's full image
        wait_for(lambda: lane.image() is not None and lane.image().final)
        assert gated.calls == [(1, 16), (4, 16), (4, 64)]  # frames 2 and 3 were never rendered
        assert lane.image().pixels[0, 0, 0] == 4.0
        bad = frame_request(avatar, tmp_path, frame=13)
        lane.request(bad)
        gated.gate.release()
        wait_for(lambda: lane.error(bad.key) is not None)
        assert "outside the curves" in lane.error(bad.key) and len(gated.calls) == 4  # not retried
        assert lane.image().pixels[0, 0, 0] == 4.0  # the last good image stays until a new one is ready
    finally:
        lane.close()


def test_scaled_intrinsics_and_premultiplied_over():
    params = {"K": [[100.0, 0, 32], [0, 100.0, 24], [0, 0, 1]], "width": 64, "height": 48}
    small = scaled(params, 4)
    assert (small["width"], small["height"]) == (16, 12)
    np.testing.assert_allclose(small["K"], [[25, 0, 8], [0, 25, 6], [0, 0, 1]])
    near = np.array([[[0.5, 0.0, 0.0, 0.5]]], np.float32)
    far = np.array([[[0.0, 0.0, 1.0, 1.0]]], np.float32)
    np.testing.assert_allclose(over([(1.0, near), (5.0, far)]), [[[0.5, 0.0, 0.5, 1.0]]])
    assert over([]) is None


def orthographic_front_camera(avatar: Path, width: int, height: int) -> tuple[list, list]:
    """(viewmat, K) of an orthographic camera seeing the head as the front camera does at the head's distance."""
    camera = front_camera(FlameModel.load(avatar / "flame_model.npz").v_template, height, width)
    K = camera.K.copy()
    K[:2, :2] /= camera.viewmat[2, 3]  # pixels a metre there
    return camera.viewmat.tolist(), K.tolist()


def test_an_orthographic_view_previews_reduced_then_full_in_the_same_place(worker, avatar, tmp_path):
    seen = []
    viewmat, K = orthographic_front_camera(avatar, 64, 48)
    lane = PreviewLane(lambda: worker, on_image=lambda: seen.append(lane.image()), scale=4)
    try:
        req = frame_request(avatar, tmp_path / "lane", viewmat=viewmat, K=K, camera_model="ortho")
        lane.request(req)
        wait_for(lambda: lane.image() is not None and lane.image().final)
    finally:
        lane.close()
    reduced, full = seen[0].pixels[..., 3], seen[-1].pixels[..., 3]
    assert reduced.shape == (12, 16) and full.shape == (48, 64) and full.max() > 0.5

    def centre(alpha):  # the head's centre in the full image's pixels
        ys, xs = np.mgrid[:alpha.shape[0], :alpha.shape[1]] + 0.5
        return np.array([(xs * alpha).sum(), (ys * alpha).sum()]) / alpha.sum() * (64 / alpha.shape[1])

    assert np.abs(centre(reduced) - centre(full)).max() < 1.0
    direct = render_frame(worker, {**req.layers[0][1], "cache": str(tmp_path / "direct")})
    assert np.array_equal(seen[-1].pixels, direct)
    pinhole = render_frame(worker, {**req.layers[0][1], "cache": str(tmp_path / "p"), "camera_model": "pinhole"})
    assert np.abs(pinhole[..., 3] - full).max() > 0.05  # the model travels: a pinhole with this K differs


def blender_ortho_window(left, right, bottom, top, near, far) -> np.ndarray:
    """Blender's orthographic window matrix (orthographic_m4)."""
    return np.array([[2 / (right - left), 0, 0, -(right + left) / (right - left)],
                     [0, 2 / (top - bottom), 0, -(top + bottom) / (top - bottom)],
                     [0, 0, -2 / (far - near), -(far + near) / (far - near)], [0, 0, 0, 1]])


def test_an_orthographic_viewport_maps_points_as_blender_draws_them():
    """Blender draws an orthographic view from -clip_end/2 to clip_end/2 around its view point; the camera
    puts every point where Blender's window matrix does, and in front of the near plane, behind ones too."""
    width, height, clip_end = 320, 200, 100.0
    window = blender_ortho_window(-0.21, 0.19, -0.12, 0.13, -clip_end / 2, clip_end / 2)  # off-centre, like a shift
    angle = np.radians(30)
    view = np.eye(4)
    view[:3, :3] = [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]]
    view[:3, 3] = [0.05, -0.02, -0.7]
    V, K, model = viewport_camera(width, height, window, view, False, clip_end)
    assert model == "ortho"
    for world in ([0.01, 0.02, 0.0], [0.1, -0.05, 0.3], [-0.05, 0.08, 1.2]):  # the last behind the view point
        clip = window @ view @ np.append(world, 1.0)
        expected = ((clip[0] + 1) / 2 * width, (1 - clip[1]) / 2 * height)  # rows go down
        x, y, z = (V @ np.append(world, 1.0))[:3]
        assert np.allclose((K[0, 0] * x + K[0, 2], K[1, 1] * y + K[1, 2]), expected, atol=1e-9)
        assert z > 0.01
