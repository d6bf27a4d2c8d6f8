"""The avatar report: `train all` writes it, `emotalker report` rewrites it, and a real browser (Debian's
chromium, headless) decodes every image and the video in it."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from emotion_fixture import make_emotion_dataset

from emotalker.cli.main import main
from emotalker.core.models.bundle import AvatarBundle
from emotalker.core.training.history import thinned_history

# Appended to a copy of the page by the test, never shipped in it: waits for the page and every video to
# load or fail, then writes what it found into the DOM, which chromium's --dump-dom prints.
CHECKER = """<script>
(() => {
  const videos = [...document.querySelectorAll("video")];
  // Listening from here on (the script follows the videos): a failed <source> fires its error on the source
  // element, which a capturing listener on the video sees; NETWORK_NO_SOURCE (3) covers one already failed.
  const settled = videos.map(v => new Promise(ok => {
    if (v.readyState >= 2 || v.error || v.networkState === 3) return ok();
    v.addEventListener("loadeddata", ok);
    v.addEventListener("error", ok, true);
  }));
  const report = () => {
    const out = document.createElement("pre");
    out.id = "report-check";
    out.textContent = JSON.stringify({
      images: [...document.images].map(i => ({alt: i.alt, complete: i.complete, width: i.naturalWidth})),
      videos: videos.map(v => ({readyState: v.readyState, width: v.videoWidth, network: v.networkState,
                                error: v.error ? v.error.code + " " + v.error.message : null}))});
    document.body.appendChild(out);
  };
  window.addEventListener("load", () => Promise.all(settled).then(report));
})();
</script>"""


def chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        if shutil.which(name):
            return shutil.which(name)
    pytest.skip("needs Debian's chromium (apt-get install chromium) to load the report in a real browser")


def browser_check(page, tmp_path) -> dict:
    """What chromium found in the page: {"images": [...], "videos": [...]}."""
    checked = tmp_path / "checked.html"
    checked.write_text(page.read_text(encoding="utf-8").replace("</body>", CHECKER + "</body>"), encoding="utf-8")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--mute-audio",
             f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=20000", "--dump-dom"]
    proc = subprocess.run([chromium(), *flags, checked.as_uri()], capture_output=True, text=True, timeout=180)
    found = re.search(r'<pre id="report-check">(.*?)</pre>', proc.stdout, re.S)
    assert found, f"the checker never reported (chromium status {proc.returncode}): {proc.stderr[-2000:]}"
    return json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(dataset, avatar trained by `train all`, its stdout): a few steps a stage, on 32-pixel frames."""
    root = tmp_path_factory.mktemp("report")
    dataset, _ = make_emotion_dataset(root)
    avatar = root / "trained"
    assert main(["train", "all", str(dataset), "--out", str(avatar), "--neutral-steps", "20", "--gaussians", "100",
                 "--a2e-steps", "2", "--emotion-steps", "10", "--eval-stride", "8", "--progress", "none"]) in (0, None)
    return dataset, avatar


def test_train_all_writes_the_report_and_records_each_stages_history(trained):
    _, avatar = trained
    page = (avatar / "report.html").read_text(encoding="utf-8")
    stages = AvatarBundle.open(avatar).manifest()["stages"]
    assert [h["step"] for h in stages["neutral"]["history"]] == [10, 20]
    assert [h["step"] for h in stages["emotion"]["history"]] == [10]
    assert stages["neutral"]["train"]["steps"] == 20 and stages["a2e"]["train"]["steps"] == 2
    for part in ("Held-out quality", "Ground truth and renders", "Emotion x intensity", "A2E-driven clip",
                 "Training curves", "Training settings and times"):
        assert part in page
    # Self-contained: nothing is fetched, every image and the video are inline.
    assert not re.search(r'(src|href)="(?!data:)', page)
    # The test split's one emotion (truth and three stages), the 8 x 3 grid, two curves.
    assert page.count("<img") == 4 + 8 * 3 + 2
    assert page.count('<source src="data:video/mp4;base64,') == 1


def test_a_real_browser_decodes_every_image_and_the_video(trained, tmp_path):
    _, avatar = trained
    found = browser_check(avatar / "report.html", tmp_path)
    assert len(found["images"]) == 30
    assert [i for i in found["images"] if not (i["complete"] and i["width"] > 0)] == []
    assert len(found["videos"]) == 1
    video = found["videos"][0]
    assert video["error"] is None and video["readyState"] >= 2 and video["width"] > 0, video


def test_the_check_sees_an_undecodable_image_and_video(tmp_path):
    """The browser check can fail: a broken image and an MPEG-4 part 2 video (which chromium does not play)."""
    import imageio_ffmpeg

    from emotalker.core.evaluation.report.images import data_uri

    video = tmp_path / "mpeg4.mp4"
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-loglevel", "error", "-f", "lavfi", "-i",
                    "testsrc=size=64x64:rate=25", "-t", "1", "-c:v", "mpeg4", str(video)], check=True, timeout=60)
    page = tmp_path / "bad.html"
    page.write_text(f'<html><body><img alt="broken" src="data:image/png;base64,AAAA">'
                    f'<video muted preload="auto"><source src="{data_uri("video/mp4", video.read_bytes())}" '
                    f'type="video/mp4"></video></body></html>', encoding="utf-8")
    found = browser_check(page, tmp_path)
    assert found["images"][0]["width"] == 0
    assert found["videos"][0]["readyState"] < 2


def test_the_report_command_without_a_dataset_says_why_the_held_out_parts_are_missing(trained, tmp_path, capsys):
    dataset, avatar = trained
    moved = tmp_path / "elsewhere"
    shutil.copytree(avatar, moved)
    manifest = json.loads((moved / "avatar.json").read_text())
    for info in manifest["stages"].values():
        info["dataset"] = str(tmp_path / "gone")
    (moved / "avatar.json").write_text(json.dumps(manifest))
    assert main(["report", str(moved), "--out", str(tmp_path / "r.html"), "--device", "cpu"]) in (0, None)
    page = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert "no dataset was given and the dataset avatar.json records" in page and "is not there" in page
    assert "<video" not in page and "Training curves" in page
    assert f"wrote {tmp_path / 'r.html'}" in capsys.readouterr().out


def test_the_report_command_refuses_a_bad_output_and_a_folder_that_is_no_avatar(trained, tmp_path, capsys):
    _, avatar = trained
    assert main(["report", str(avatar), "--out", str(tmp_path / "r.txt")]) == 2
    assert "must end in .html" in capsys.readouterr().err
    assert main(["report", str(tmp_path)]) == 2
    assert "avatar.json" in capsys.readouterr().err
    assert not (tmp_path / "report.html").exists()


def test_history_is_thinned_evenly_keeping_both_ends():
    history = [{"step": 10 * i} for i in range(1, 3001)]
    kept = thinned_history(history, 400)
    assert len(kept) == 400 and kept[0]["step"] == 10 and kept[-1]["step"] == 30000
    assert thinned_history(history[:5], 400) == history[:5]


def test_the_running_mean_of_the_curves_is_centred_and_shorter_at_the_ends():
    import numpy as np

    from emotalker.core.evaluation.report.curves import running_mean

    assert np.allclose(running_mean([2.0] * 50), 2.0)
    ramp = np.arange(40.0)
    smooth = running_mean(ramp, share=0.1)  # a window of 5: a straight line stays itself inside
    assert np.allclose(smooth[2:-2], ramp[2:-2]) and smooth[0] == 1.0 and smooth[-1] == 38.0
