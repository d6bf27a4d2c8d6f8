"""The emotion vocabulary (core/base/emotions.py): names, one-hots, mixes, intensities, and the
add-on's copy of the list, read with `ast` so no bpy is needed."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch

from emotalker.core.base.emotions import (EMOTIONS, MAX_INTENSITY, NEUTRAL, NEUTRAL_INDEX, UnknownEmotionError,
                                          check_intensity, emotion_index, normalise_mix, one_hot, parse_mix)
from emotalker.core.base.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
VOCABULARY = {"EMOTIONS", "NEUTRAL", "NEUTRAL_INDEX", "MAX_INTENSITY", "UnknownEmotionError",
              "emotion_index", "one_hot", "parse_mix", "normalise_mix", "check_intensity"}
OLD_NAMES = {"resolve_emotion", "mix_weights", "emotion_weights"}  # the functions this module replaced


def test_the_categories_keep_the_order_of_saved_models():
    assert EMOTIONS == ("neutral", "angry", "contempt", "disgusted", "fear", "happy", "sad", "surprised")
    assert NEUTRAL == "neutral" and EMOTIONS[NEUTRAL_INDEX] == NEUTRAL
    assert MAX_INTENSITY == 3.0


def test_emotion_index_names_the_unknown_emotion():
    assert emotion_index("sad") == 6
    with pytest.raises(UnknownEmotionError, match="clip 'c1': unknown emotion 'Sad'; expected one of neutral, angry") as err:
        emotion_index("Sad", "d.json", context="clip 'c1': ")
    assert err.value.path == "d.json"


def test_one_hot():
    w = one_hot("fear")
    assert w.shape == (8,) and w.dtype == np.float32 and w.sum() == 1 and w[EMOTIONS.index("fear")] == 1
    with pytest.raises(ValueError, match="unknown emotion 'joy'"):
        one_hot("joy")
    with pytest.raises(InputError):
        one_hot("joy")
    rows = one_hot([NEUTRAL, "happy", NEUTRAL], np.float64)
    assert rows.shape == (3, 8) and rows.dtype == np.float64
    np.testing.assert_array_equal(rows.argmax(1), [0, 5, 0])
    np.testing.assert_array_equal(rows.sum(1), 1.0)


def test_parse_mix():
    with pytest.raises(InputError, match="unknown emotion 'joyful'.*or a mix like happy=0.7,sad=0.3"):
        parse_mix("joyful")
    np.testing.assert_allclose(parse_mix("happy=3,sad=1")[[EMOTIONS.index("happy"), EMOTIONS.index("sad")]], [0.75, 0.25])
    np.testing.assert_array_equal(parse_mix("happy"), one_hot("happy"))
    # names in any case, spaces around parts, a repeated name adds up
    np.testing.assert_allclose(parse_mix(" Happy = 1, sad=2 ,happy"), parse_mix("happy=2,sad=2"))
    w = parse_mix("neutral=0.5,angry=0.25,fear=0.25")
    assert w.dtype == np.float32 and w.sum() == pytest.approx(1.0)


@pytest.mark.parametrize("spec, message", [
    ("happy=lots", "emotion weight 'lots' for happy is not a number"),
    ("happy=-1", "emotion weight for happy must be a finite number >= 0, got -1"),
    ("happy=nan", "emotion weight for happy must be a finite number >= 0, got nan"),
    ("happy=0,sad=0", "emotion mix 'happy=0,sad=0' has no positive weight"),
    ("happy,,sad", "unknown emotion ''"),
])
def test_parse_mix_errors_name_the_option(spec, message):
    with pytest.raises(InputError, match=message) as err:
        parse_mix(spec, "--emotion")
    assert err.value.path == "--emotion"


def test_normalise_mix_numpy_and_torch():
    rows = np.array([[0, 0, 0, 0, 0, 2.5, 0, 0], [0, 0, 0, 0, 0.5, 0, 1.5, 0], np.zeros(8)])
    out = normalise_mix(rows)
    assert isinstance(out, np.ndarray) and out.dtype == np.float64
    np.testing.assert_array_equal(out, [one_hot("happy"), 0.25 * one_hot("fear") + 0.75 * one_hot("sad"), one_hot(NEUTRAL)])
    t = normalise_mix(torch.from_numpy(rows.astype(np.float32)))
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32
    np.testing.assert_array_equal(t.numpy(), out.astype(np.float32))
    assert torch.equal(normalise_mix(torch.zeros(8)), torch.from_numpy(one_hot(NEUTRAL)))
    assert normalise_mix(np.full(8, 1e-30)).sum() == pytest.approx(1.0)  # tiny totals still sum to 1


@pytest.mark.parametrize("weights, message", [
    (np.ones(5), r"emotion weights need 8 values \(neutral, angry,.*\), got 5"),
    (-one_hot("sad"), "emotion weights must be finite and >= 0"),
    (np.full(8, np.nan), "emotion weights must be finite and >= 0"),
    (torch.full((2, 8), float("inf")), "emotion weights must be finite and >= 0"),
])
def test_normalise_mix_refuses_bad_weights(weights, message):
    with pytest.raises(InputError, match=message):
        normalise_mix(weights)


def test_check_intensity_bounds():
    assert check_intensity(0) == 0.0 and check_intensity(MAX_INTENSITY) == 3.0 and check_intensity(np.float32(1.5)) == 1.5
    assert check_intensity(torch.tensor(2.0)) == 2.0
    np.testing.assert_array_equal(check_intensity(np.array([0.0, 1.5, 3.0], np.float32)), [0.0, 1.5, 3.0])
    for bad in (3.0001, -0.1, float("nan"), float("inf")):
        with pytest.raises(InputError, match=r"intensity must be in \[0, 3\], got"):
            check_intensity(bad)
    with pytest.raises(InputError, match=r"--intensity: intensity must be in \[0, 3\], got 3.5"):
        check_intensity(3.5, "--intensity")
    with pytest.raises(InputError, match=r"clip 'c': intensity must be in \[0, 3\], got 4"):
        check_intensity(np.array([1.0, 4.0, -1.0]), context="clip 'c': ")  # an array names its first bad value
    for bad in ("2", True, None, [1, "x"]):
        with pytest.raises(InputError, match="intensity must be a number"):
            check_intensity(bad)


def _module_constants(path: Path) -> dict[str, object]:
    return {t.id: ast.literal_eval(node.value) for node in ast.parse(path.read_text()).body
            if isinstance(node, ast.Assign) for t in node.targets if isinstance(t, ast.Name)
            and t.id in ("EMOTIONS", "MAX_INTENSITY")}


def test_blender_addon_copy_equals_the_core():
    """The add-on imports only bpy and numpy, so it keeps its own copy; it must not drift."""
    props = ROOT / "blender_addon" / "properties.py"
    assert _module_constants(props) == {"EMOTIONS": EMOTIONS, "MAX_INTENSITY": MAX_INTENSITY}
    # `intensity: FloatProperty(min=..., max=...)`: the property is the annotation
    calls = [n.annotation for n in ast.walk(ast.parse(props.read_text())) if isinstance(n, ast.AnnAssign)
             and isinstance(n.target, ast.Name) and n.target.id == "intensity"]
    assert len(calls) == 1
    bounds = {k.arg: k.value for k in calls[0].keywords if k.arg in ("min", "max")}
    assert ast.literal_eval(bounds["min"]) == 0.0
    assert isinstance(bounds["max"], ast.Name) and bounds["max"].id == "MAX_INTENSITY"


def _python_files():
    for folder in ("emotalker", "tests", "benchmarks", "tools"):
        yield from (ROOT / folder).rglob("*.py")


def test_the_vocabulary_is_defined_and_imported_in_one_place():
    home = ROOT / "emotalker" / "core" / "base" / "emotions.py"
    problems = []
    for path in _python_files():
        if path == home:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module != "emotalker.core.base.emotions":
                problems += [f"{path}: imports {a.name} from {node.module}" for a in node.names if a.name in VOCABULARY]
            elif isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name in VOCABULARY | OLD_NAMES:
                problems.append(f"{path}: defines {node.name}")
            elif isinstance(node, ast.Assign):
                problems += [f"{path}: assigns {t.id}" for t in node.targets
                             if isinstance(t, ast.Name) and t.id in VOCABULARY]
    assert not problems, "\n".join(problems)
