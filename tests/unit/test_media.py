"""Probing and decoding real media files: every container we list, windows and joins."""

from __future__ import annotations

import itertools
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from stoker.errors import InvalidInput, MissingDependency
from stoker.jobs.media import MEDIA_EXTENSIONS, SAMPLE_RATE, decode, find_media, probe
from tests import media_files
from tests.texts import sentences

# name, codec (a media_files key), encode options, expected codec, rate, channels,
# and how far the audio may start late: raw ADTS and WMA carry no priming length, so
# FFmpeg (like every player) keeps the encoder's ~46 ms lead-in.
FORMATS: list[tuple[str, str, dict[str, Any], str, int, int, float]] = [
    ("speech.mp3", "mp3", {}, "mp3", 22050, 1, 0.0),
    ("speech-44k-stereo.mp3", "mp3", {"rate": 44100, "layout": "stereo"}, "mp3", 44100, 2, 0.0),
    ("speech.m4a", "aac", {}, "aac", 22050, 1, 0.0),
    ("speech-48k-stereo.m4a", "aac", {"rate": 48000, "layout": "stereo"}, "aac", 48000, 2, 0.0),
    ("speech.aac", "aac", {}, "aac", 22050, 1, 0.05),
    ("speech.ogg", "vorbis", {}, "vorbis", 22050, 2, 0.0),
    ("speech.opus", "opus", {}, "opus", 48000, 1, 0.0),
    ("speech.webm", "opus", {}, "opus", 48000, 1, 0.0),
    ("speech.flac", "flac", {}, "flac", 22050, 1, 0.0),
    ("speech-copy.wav", "pcm_s16le", {}, "pcm_s16le", 22050, 1, 0.0),
    ("speech.aiff", "pcm_s16be", {}, "pcm_s16be", 22050, 1, 0.0),
    ("speech.wma", "wma", {}, "wmav2", 22050, 1, 0.05),
    ("speech.mp4", "aac", {}, "aac", 22050, 1, 0.0),  # with a video track
]
SPEECH_S = 11.0  # about what sentences(3) lasts


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="module")
def speech(folder: Path) -> Path:
    return media_files.speech_wav(folder / "speech.wav", sentences(3))


@pytest.fixture(scope="module")
def library(folder: Path, speech: Path) -> dict[str, Path]:
    """The speech recording in every format of FORMATS (about 1 s to write them all)."""
    return {
        name: media_files.encode(speech, folder / name, codec, **options)
        for name, codec, options, *_ in FORMATS
    }


@pytest.fixture(scope="module")
def reference(speech: Path) -> np.ndarray:
    return decode(speech)


def _close(a: np.ndarray, b: np.ndarray) -> float:
    """Normalised correlation of two equal-length signals (1.0: the same shape)."""
    return float(np.dot(a, b) / np.sqrt(np.dot(a, a) * np.dot(b, b)))


# --- probe and decode, format by format ---------------------------------------------


def test_the_source_recording_is_long_enough_for_the_cuts_below(speech: Path) -> None:
    assert probe(speech).duration_s == pytest.approx(SPEECH_S, abs=1.5)


@pytest.mark.parametrize(("name", "codec", "rate", "channels"), [(f[0], *f[3:6]) for f in FORMATS])
def test_probe_reports_the_first_audio_stream(
    library: dict[str, Path], speech: Path, name: str, codec: str, rate: int, channels: int
) -> None:
    info = probe(library[name])
    # Encoder delay and padding (MP3, AAC, WMA) may add a frame or two.
    assert info.duration_s == pytest.approx(probe(speech).duration_s, abs=0.1)
    assert (info.codec, info.sample_rate, info.channels) == (codec, rate, channels)


@pytest.mark.parametrize(("name", "late_s"), [(f[0], f[6]) for f in FORMATS])
def test_decode_gives_16khz_mono_float32_in_line_with_the_source(
    library: dict[str, Path], reference: np.ndarray, name: str, late_s: float
) -> None:
    audio = decode(library[name])
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert len(audio) == pytest.approx(len(reference), abs=0.1 * SAMPLE_RATE)
    # The same words at the same sample offsets: the codec's delay was taken out.
    late = max(
        range(round(late_s * SAMPLE_RATE) + 1),
        key=lambda k: _close(audio[16000 + k : 96000 + k], reference[16000:96000]),
    )
    assert _close(audio[16000 + late : 96000 + late], reference[16000:96000]) > 0.99


def test_the_container_names_come_from_ffmpeg(library: dict[str, Path]) -> None:
    assert probe(library["speech.mp3"]).container == "mp3"
    assert probe(library["speech.mp4"]).container == "mov,mp4,m4a,3gp,3g2,mj2"


@pytest.mark.parametrize(("rate", "channels"), [(44100, 2), (48000, 2), (8000, 1), (11025, 1)])
def test_any_rate_and_stereo_come_out_as_16khz_mono(folder: Path, rate: int, channels: int) -> None:
    # Given a 440 Hz left / 660 Hz right tone
    path = media_files.tone_wav(folder / f"tone-{rate}-{channels}.wav", 2.0, rate, channels)
    # When it is decoded
    audio = decode(path)
    # Then it is 2 s at 16 kHz, with both channels mixed in at a sane level
    assert len(audio) == 2 * SAMPLE_RATE
    spectrum = np.abs(np.fft.rfft(audio))
    peaks_hz = sorted(np.argsort(spectrum)[-channels:] * SAMPLE_RATE / len(audio))
    assert peaks_hz == [440.0, 660.0][:channels]
    assert 0.2 < np.abs(audio).max() <= 1.0


def test_a_stream_without_a_length_header_is_measured_by_decoding(
    folder: Path, speech: Path
) -> None:
    path = media_files.streamed_mkv(speech, folder / "live.mkv")
    assert probe(path).duration_s == pytest.approx(probe(speech).duration_s, abs=0.01)


# --- windows and joins ---------------------------------------------------------------

CUTS = [0.0, 1.3, 2.5, 5.00003, 7.77, 10.2]


@pytest.mark.parametrize("name", ["speech-copy.wav", "speech.mp3", "speech.m4a"])
def test_windows_cut_at_the_same_points_join_into_the_whole(
    library: dict[str, Path], name: str
) -> None:
    path = library[name]
    whole = decode(path, CUTS[0], CUTS[-1])
    parts = [decode(path, a, b) for a, b in itertools.pairwise(CUTS)]
    # Every part holds exactly its own samples: no gap, no repeat at any join
    assert [len(p) for p in parts] == [
        round(b * SAMPLE_RATE) - round(a * SAMPLE_RATE) for a, b in itertools.pairwise(CUTS)
    ]
    joined = np.concatenate(parts)
    assert len(joined) == len(whole)
    if name.endswith(".m4a"):
        # AAC fills some bands with noise from a generator the decoder does not rewind
        # on a seek, so those bands differ a little; the speech itself lines up.
        assert np.abs(joined - whole).max() < 0.1
        assert np.sum((joined - whole) ** 2) < 1e-3 * np.sum(whole**2)
    else:
        np.testing.assert_array_equal(joined, whole)


@pytest.mark.parametrize("name", ["speech-copy.wav", "speech.mp3", "speech.m4a"])
def test_two_windows_from_a_seek_add_up_to_one(library: dict[str, Path], name: str) -> None:
    a, b, c = 3.21, 6.000031, 9.5
    left, right = decode(library[name], a, b), decode(library[name], b, c)
    assert len(left) + len(right) == len(decode(library[name], a, c))


@pytest.fixture(scope="module")
def minute(folder: Path) -> Path:
    """60 s of seeded noise at 44.1 kHz: any sample out of place shows."""
    return media_files.noise_wav(folder / "minute.wav", 60.0, rate=44100)


@pytest.mark.parametrize("suffix", [".wav", ".mp3"])
def test_a_window_in_the_middle_of_a_long_file_is_exactly_that_part(
    folder: Path, minute: Path, suffix: str
) -> None:
    path = minute if suffix == ".wav" else media_files.encode(minute, folder / "minute.mp3", "mp3")
    whole = decode(path)
    window = decode(path, 31.4159, 33.0)
    assert len(window) == round(33.0 * SAMPLE_RATE) - round(31.4159 * SAMPLE_RATE)
    start = round(31.4159 * SAMPLE_RATE)
    np.testing.assert_array_equal(window, whole[start : start + len(window)])


def test_a_window_past_the_end_is_short_or_empty(library: dict[str, Path]) -> None:
    path = library["speech.mp3"]
    total = len(decode(path))
    assert len(decode(path, 10.0, 60.0)) == total - 10 * SAMPLE_RATE
    assert len(decode(path, 30.0, 40.0)) == 0


def test_a_reversed_window_is_a_programming_error(library: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match="bad window"):
        decode(library["speech.mp3"], 5.0, 4.0)


# --- files that are not what they say ----------------------------------------------


def test_an_empty_file_is_refused_with_the_users_name(folder: Path) -> None:
    path = folder / "0001.mp3"
    path.write_bytes(b"")
    message = "Interview 3.mp3 is empty (0 bytes); remove it or replace it with the recording."
    with pytest.raises(InvalidInput, match=f"^{re.escape(message)}$"):
        probe(path, name="Interview 3.mp3")
    with pytest.raises(InvalidInput, match="is empty"):
        decode(path)


@pytest.mark.parametrize(
    "content",
    [b"Meeting notes, not audio.\n" * 40, np.random.default_rng(7).bytes(50_000)],
    ids=["text", "random"],
)
@pytest.mark.parametrize("suffix", [".mp3", ".wav", ".m4a"])
def test_a_file_ffmpeg_cannot_read_is_refused(folder: Path, content: bytes, suffix: str) -> None:
    path = folder / f"notes{suffix}"
    path.write_bytes(content)
    expected = (
        rf"notes{suffix} is not an audio or video file that ffmpeg can read \(Invalid data "
        r"found when processing input\); check the file is not corrupt or mislabelled\."
    )
    with pytest.raises(InvalidInput, match=expected):
        probe(path)
    with pytest.raises(InvalidInput, match=expected):
        decode(path)


def test_a_video_without_sound_is_refused(folder: Path) -> None:
    path = media_files.video_only(folder / "slides.mp4")
    with pytest.raises(InvalidInput, match=r"^slides.mp4 has no audio track\.$"):
        probe(path)
    with pytest.raises(InvalidInput, match="has no audio track"):
        decode(path)


def test_a_wav_with_no_samples_is_refused(folder: Path) -> None:
    path = media_files.silence_wav(folder / "blank.wav", 0.0)
    with pytest.raises(InvalidInput, match=r"^blank.wav has no audio samples; remove it"):
        probe(path)
    assert len(decode(path)) == 0


def test_a_truncated_mp3_gives_what_is_there(folder: Path, library: dict[str, Path]) -> None:
    # Given an MP3 cut in half (its Xing header still claims the full length)
    data = library["speech.mp3"].read_bytes()
    path = folder / "half.mp3"
    path.write_bytes(data[: len(data) // 2])
    # Then probe counts what is there and decode returns it
    audio = decode(path)
    assert probe(path).duration_s == pytest.approx(len(audio) / SAMPLE_RATE, abs=0.1)
    assert 0.4 < len(audio) / len(decode(library["speech.mp3"])) < 0.6
    assert len(decode(path, 2.0, 4.0)) == 2 * SAMPLE_RATE


def test_corrupt_data_mid_stream_says_where(folder: Path, library: dict[str, Path]) -> None:
    data = bytearray(library["speech.mp3"].read_bytes())
    middle = len(data) // 2
    data[middle : middle + 4000] = bytes(4000)
    path = folder / "damaged.mp3"
    path.write_bytes(bytes(data))
    with pytest.raises(InvalidInput, match=r"^damaged.mp3 is corrupt at about 5\.\d s \("):
        decode(path)


def test_without_pyav_the_error_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, library: dict[str, Path]
) -> None:
    monkeypatch.setitem(sys.modules, "av", None)
    with pytest.raises(MissingDependency, match=r"stoker\[transcribe\]"):
        probe(library["speech.mp3"])


# --- finding media in an archive ----------------------------------------------------


def test_find_media_walks_the_tree_in_order_and_skips_hidden_and_other_files(
    tmp_path: Path,
) -> None:
    for relative in [
        "b/talk.MP3",
        "a/deeper/z.wav",
        "a/notes.txt",
        "a/.hidden.wav",
        ".cache/x.mp3",
        "c/clip.Mov",
        "top.flac",
        "cover.jpg",
        "readme",
    ]:
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_bytes(b"x")
    (tmp_path / "folder.mp3").mkdir()  # a directory, not a file
    found = [p.relative_to(tmp_path).as_posix() for p in find_media(tmp_path)]
    assert found == ["a/deeper/z.wav", "b/talk.MP3", "c/clip.Mov", "top.flac"]


def test_the_extensions_are_lower_case_with_a_dot() -> None:
    assert all(ext.startswith(".") and ext == ext.lower() for ext in MEDIA_EXTENSIONS)
    assert {".mp3", ".m4a", ".mp4", ".opus", ".aif"} <= MEDIA_EXTENSIONS
