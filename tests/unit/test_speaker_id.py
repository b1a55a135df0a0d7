"""Resolving `speaker` (a name or an id) against a voice's config, as submission does."""

from __future__ import annotations

from types import MappingProxyType

import pytest

from stoker.errors import InvalidInput
from stoker.jobs.speak import speaker_id
from stoker.workers.catalog import VoiceInfo


def voice(speakers: dict[str, int], count: int | None = None) -> VoiceInfo:
    n = len(speakers) if count is None else count
    return VoiceInfo(22050, n, MappingProxyType(speakers), "en_US")


DUO = voice({"joe": 0, "slow": 1})
# LibriTTS-R style: speakers named by numbers that are not their ids.
NUMBERED = voice({"3922": 0, "8699": 1, "1": 2})
SINGLE = voice({}, 1)


@pytest.mark.parametrize(
    ("info", "speaker", "sid"),
    [
        (DUO, "slow", 1),
        (DUO, 1, 1),
        (DUO, "1", 1),  # the CLI passes every speaker as text
        (DUO, 0, 0),
        (DUO, None, None),
        (NUMBERED, "3922", 0),  # a name first...
        (NUMBERED, "1", 2),
        (NUMBERED, 1, 1),  # ...but a JSON number is an id
        (SINGLE, 0, None),  # piper ignores ids on a single-speaker voice
    ],
)
def test_names_and_ids_resolve_to_the_piper_speaker_id(
    info: VoiceInfo, speaker: int | str | None, sid: int | None
) -> None:
    assert speaker_id(speaker, "v", info) == sid


@pytest.mark.parametrize(
    ("info", "speaker", "message"),
    [
        (DUO, "fast", "voice 'v' has no speaker 'fast'; speakers: joe (0), slow (1)."),
        (DUO, "²", "voice 'v' has no speaker '²'; speakers: joe (0), slow (1)."),
        (DUO, "-1", "voice 'v' has no speaker '-1'; speakers: joe (0), slow (1)."),
        (DUO, "9" * 5000, "has no speaker '999"),  # more digits than int() takes
        (
            DUO,
            2,
            "speaker 2 is out of range for voice 'v', which has 2 speaker(s) (ids 0..1); "
            "speakers: joe (0), slow (1).",
        ),
        (SINGLE, "joe", "voice 'v' has no speaker 'joe'; speakers: none (single-speaker voice)."),
        (SINGLE, 3, "which has 1 speaker(s) (ids 0..0)."),
    ],
)
def test_an_unknown_speaker_is_refused_with_the_speakers_listed(
    info: VoiceInfo, speaker: int | str, message: str
) -> None:
    with pytest.raises(InvalidInput) as refused:
        speaker_id(speaker, "v", info)
    assert message in str(refused.value)
