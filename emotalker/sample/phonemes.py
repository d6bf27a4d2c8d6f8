"""Speech and phoneme timings from libespeak-ng, through ctypes.

espeak-ng, run in synchronous mode with phoneme events on, hands each block of
16-bit samples to a callback together with the events inside it; a phoneme
event carries the phoneme's name and its position in the audio. We keep both,
so the mouth can be animated from exactly the phonemes that were spoken.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
from dataclasses import dataclass

import numpy as np

from emotalker.core.base.errors import EmoTalkerError

# Values from espeak-ng's speak_lib.h.
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_PHONEME_EVENTS = 0x0001
_EVENT_LIST_TERMINATED = 0
_EVENT_WORD = 1
_EVENT_PHONEME = 7
_CHARS_UTF8 = 1
_POS_CHARACTER = 1
_RATE, _VOLUME, _PITCH, _RANGE = 1, 2, 3, 4


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))


class EspeakError(EmoTalkerError):
    """libespeak-ng is missing or failed."""


@dataclass(frozen=True)
class Phoneme:
    """One spoken phoneme: espeak-ng's name and its start time in seconds."""

    name: str
    start: float


@dataclass
class Speech:
    """Synthesised speech: samples [N] float32 in -1..1 at `sample_rate`, and its phonemes in order."""

    samples: np.ndarray
    sample_rate: int
    phonemes: list[Phoneme]

    @property
    def duration(self) -> float:
        return len(self.samples) / self.sample_rate


@dataclass(frozen=True)
class Voice:
    """espeak-ng voice settings: name (e.g. "en-us", "en+f3"), rate in words a minute, pitch and range 0-100."""

    name: str = "en-us"
    rate: int = 165
    pitch: int = 50
    range: int = 50


class Espeak:
    """A handle on libespeak-ng. The library is global state, so one lock guards every call."""

    _lock = threading.Lock()
    _lib = None
    _sample_rate = 0

    @classmethod
    def _load(cls):
        if cls._lib is None:
            name = ctypes.util.find_library("espeak-ng") or "libespeak-ng.so.1"
            try:
                lib = ctypes.CDLL(name)
            except OSError:
                raise EspeakError("libespeak-ng not found: install espeak-ng (Debian/Ubuntu: apt-get install espeak-ng libespeak-ng1)") from None
            lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
            lib.espeak_SetSynthCallback.argtypes = [_CALLBACK]
            lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
            lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
            lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                         ctypes.c_uint, ctypes.POINTER(ctypes.c_uint), ctypes.c_void_p]
            rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 200, None, _INITIALIZE_PHONEME_EVENTS)
            if rate <= 0:
                raise EspeakError(f"espeak_Initialize failed ({rate}); is espeak-ng-data installed?")
            cls._lib, cls._sample_rate = lib, rate
        return cls._lib

    @classmethod
    def synthesize(cls, text: str, voice: Voice = Voice()) -> Speech:
        """Speak `text`; returns the samples and each phoneme's start time."""
        with cls._lock:
            lib = cls._load()
            chunks: list[np.ndarray] = []
            events: list[Phoneme] = []
            done = [0]  # samples received so far

            def on_audio(wav, n, ev):
                if n > 0 and wav:
                    chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
                i = 0
                while ev[i].type != _EVENT_LIST_TERMINATED:
                    e = ev[i]
                    if e.type == _EVENT_PHONEME:
                        name = bytes(e.id.string).split(b"\0", 1)[0].decode("utf-8", "replace")
                        # audio_position is in ms from the start of the message.
                        events.append(Phoneme(name, e.audio_position / 1000.0))
                    i += 1
                done[0] += max(n, 0)
                return 0

            cb = _CALLBACK(on_audio)  # kept alive for the call
            lib.espeak_SetSynthCallback(cb)
            if lib.espeak_SetVoiceByName(voice.name.encode()) != 0:
                raise EspeakError(f"espeak-ng has no voice {voice.name!r}")
            lib.espeak_SetParameter(_RATE, int(voice.rate), 0)
            lib.espeak_SetParameter(_PITCH, int(voice.pitch), 0)
            lib.espeak_SetParameter(_RANGE, int(voice.range), 0)
            data = text.encode("utf-8") + b"\0"
            err = lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
            if err != 0:
                raise EspeakError(f"espeak_Synth failed with code {err}")
            samples = np.concatenate(chunks).astype(np.float32) / 32768.0 if chunks else np.zeros(0, np.float32)
            return Speech(samples, cls._sample_rate, events)
