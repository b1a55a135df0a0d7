"""Model cards (workers/cards.py): a model as a worker has it, for a submitting
machine that lacks its files. A spec made from a card must check requests and
fingerprint chunks exactly as a spec of the files would. The fleet here is an
in-memory one; tests/integration/test_fleet_cards.py runs real workers on Redis."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from stoker.config import load_settings
from stoker.errors import InvalidInput, ModelLoadError, UnknownModel
from stoker.jobs import capabilities_for
from stoker.jobs.audiobook import AudiobookCapability
from stoker.jobs.base import PrepareContext
from stoker.jobs.image import ImageCapability
from stoker.jobs.speak import SpeakCapability
from stoker.queues.app import model_queue
from stoker.workers.cards import (
    DOC_MAX_BYTES,
    CardPublisher,
    FleetCards,
    ModelCard,
    card_of,
    cards_of,
)
from stoker.workers.catalog import ModelCatalog, ModelSpec, spec_from_card
from stoker.workers.fleet import WorkerBeat
from tests.diffusers_models import TinyPipelines, tiny_pipelines
from tests.piper_voices import VoiceFiles


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyPipelines:
    return tiny_pipelines(tmp_path_factory.getbasetemp() / "diffusers-models")


class MemoryFleet:
    """Heartbeats and cards in a dict: the part of a Fleet that cards use."""

    shared = True

    def __init__(self) -> None:
        self.beats: dict[str, WorkerBeat] = {}
        self.stored: dict[str, ModelCard] = {}
        self.publications = 0

    def join(
        self,
        host: str,
        cards: dict[str, ModelCard],
        serves: tuple[str, ...] = (),
        also: tuple[str, ...] = (),
    ) -> None:
        """A worker's beat: ``cards`` published, ``serves`` its queues, ``also`` names
        of more cards it holds (not stored: only names matter to the test)."""
        self.publish_cards(list(cards.values()), 60)
        self.beats[host] = WorkerBeat(
            hostname=host, device="cpu", scheduling="backlog", queues=[], pools=[],
            serves=list(serves), at=time.time(),
            cards={name: card.id for name, card in cards.items()} | {n: "-" for n in also},
        )  # fmt: skip

    def workers(self) -> list[WorkerBeat]:
        return list(self.beats.values())

    def publish_cards(self, cards: list[ModelCard], ttl_s: float) -> None:
        self.publications += 1
        self.stored.update({c.id: c for c in cards})

    def read_cards(self, ids: list[str]) -> dict[str, ModelCard]:
        return {i: self.stored[i] for i in ids if i in self.stored}


def voice_spec(voice: VoiceFiles, name: str = "duo") -> ModelSpec:
    return ModelSpec(name, "piper", voice.model, voice.config)


def test_a_cards_spec_fingerprints_as_the_files_do(two_speaker_voice: VoiceFiles) -> None:
    # Given a voice as a worker has it, and the spec its card makes elsewhere
    local = voice_spec(two_speaker_voice)
    remote = spec_from_card(card_of(local))

    # Then chunk identities match: same fingerprint, also with a job's load options
    assert remote.fingerprint == local.fingerprint
    extra = {"n_ctx": 512}
    assert remote.with_options(extra).fingerprint == local.with_options(extra).fingerprint
    # And its files are "there" (on the workers), with the worker's sizes
    assert remote.missing_files() == []
    assert remote.disk_bytes() == local.disk_bytes()
    assert remote.source == "fleet" and remote.path == local.path


def test_a_card_carries_the_small_json_files_only(tiny: TinyPipelines, tmp_path: Path) -> None:
    # Given a pipeline folder with a big JSON file (a vocabulary) beside its configs
    folder = tmp_path / "sd"
    shutil.copytree(tiny.image, folder)
    (folder / "tokenizer" / "big.json").write_text(json.dumps(["x" * 100] * DOC_MAX_BYTES))
    card = card_of(ModelSpec("sd", "diffusers", folder))

    # Then its configs travel, keyed by their place in the folder, and the big file not
    assert {"model_index.json", "vae/config.json", "unet/config.json"} <= card.documents.keys()
    assert "tokenizer/big.json" not in card.documents
    remote = spec_from_card(card)
    assert remote.read_json(folder / "unet" / "config.json") == json.loads(
        (folder / "unet" / "config.json").read_text()
    )
    # And reading a file the card does not carry says so, naming the file
    with pytest.raises(FileNotFoundError, match=r"big\.json is on the workers"):
        remote.read_json(folder / "tokenizer" / "big.json")


def catalog_with(
    tmp_path: Path, fleet: MemoryFleet, models: dict[str, Any] | None = None
) -> ModelCatalog:
    settings = load_settings(data_dir=tmp_path / "submitter", models=models or {})
    return ModelCatalog(settings, fleet=FleetCards(fleet))  # type: ignore[arg-type]


def test_a_submitter_checks_requests_with_a_workers_card(
    tmp_path: Path, tiny: TinyPipelines, two_speaker_voice: VoiceFiles
) -> None:
    # Given a worker that published cards for a pipeline and a two-speaker voice, and a
    # submitting machine whose config names neither
    fleet = MemoryFleet()
    image = ModelSpec("tiny_sd", "diffusers", tiny.image)
    fleet.join("gpu-box", cards_of([image, voice_spec(two_speaker_voice)]))
    catalog = catalog_with(tmp_path, fleet)
    ctx = PrepareContext(load_settings(data_dir=tmp_path / "submitter"), catalog)

    # Then it knows both names, and what each is for
    assert catalog.names("diffusers") == ["tiny_sd"]
    assert "duo" in catalog.names("piper")
    assert capabilities_for(catalog.get("tiny_sd")) == ["image"]

    # And an image request is checked against the pipeline's configs from the card
    with pytest.raises(InvalidInput, match="nearest valid width is 72"):
        ImageCapability().prepare({"model": "tiny_sd", "prompt": "x", "width": 70}, ctx)
    plan = ImageCapability().prepare({"model": "tiny_sd", "prompt": "x", "seed": 1}, ctx)
    assert (plan.params["width"], plan.params["height"]) == (64, 64)
    assert plan.chunks[0].identity["model"] == image.fingerprint

    # And a speak request against the voice's speakers from its .onnx.json
    with pytest.raises(InvalidInput, match="voice 'duo' has no speaker 'nobody'"):
        SpeakCapability().prepare({"text": "Hi.", "voice": "duo", "speaker": "nobody"}, ctx)
    said = SpeakCapability().prepare({"text": "Hi.", "voice": "duo", "speaker": "slow"}, ctx)
    assert said.params["speaker_id"] == 1


def test_local_files_come_first_and_a_card_stands_in_for_missing_ones(
    tmp_path: Path, two_speaker_voice: VoiceFiles
) -> None:
    # Given a worker's card for "duo" (its voice), and a submitter that configures
    # "duo" at a path where it has no files, and "mine" at a voice it has
    fleet = MemoryFleet()
    fleet.join("gpu-box", cards_of([voice_spec(two_speaker_voice)]))
    mine = voice_spec(two_speaker_voice, "mine")
    models = {
        "duo": {"backend": "piper", "path": str(tmp_path / "absent.onnx")},
        "mine": {"backend": "piper", "path": str(mine.path), "config": str(mine.config_path)},
    }
    catalog = catalog_with(tmp_path, fleet, models)

    # Then "duo" comes from the card, "mine" from its files here
    assert catalog.get("duo").card is not None
    assert catalog.get("duo").path == two_speaker_voice.model
    assert catalog.get("mine").card is None
    assert [s.name for s in catalog.fleet_specs()] == ["duo"]

    # And once no live worker has it, the missing file is named, as before
    fleet.beats.clear()
    catalog = catalog_with(tmp_path, fleet, models)  # a new reader: no cards kept
    with pytest.raises(ModelLoadError, match=r"absent\.onnx does not exist .*no live worker"):
        catalog.get("duo")
    with pytest.raises(UnknownModel) as unknown:
        catalog.get("elsewhere", backend="piper")
    assert "duo" in str(unknown.value)


def test_the_card_most_workers_hold_wins(tmp_path: Path, two_speaker_voice: VoiceFiles) -> None:
    # Given three workers with a "duo": two with one file, one with another
    fleet = MemoryFleet()
    common = card_of(voice_spec(two_speaker_voice))
    odd = common.model_copy(update={"disk_bytes": 1})
    fleet.join("a", {"duo": common})
    fleet.join("b", {"duo": odd})
    fleet.join("c", {"duo": common})

    # Then a submitter takes the majority's
    assert FleetCards(fleet).cards()["duo"].id == common.id  # type: ignore[arg-type]


def test_a_fleet_that_cannot_be_read_has_no_cards(caplog: pytest.LogCaptureFixture) -> None:
    class Away(MemoryFleet):
        def workers(self) -> list[WorkerBeat]:
            raise ConnectionError("Redis is away")

    assert FleetCards(Away()).cards() == {}  # type: ignore[arg-type]
    assert "cannot read the workers' model cards: Redis is away" in caplog.text


def test_a_worker_publishes_its_cards_when_they_change(
    tmp_path: Path, two_speaker_voice: VoiceFiles
) -> None:
    # Given a worker's voice copied to a folder of its own, and a publisher that checks
    # on every call
    folder = tmp_path / "voices"
    folder.mkdir()
    model = Path(shutil.copyfile(two_speaker_voice.model, folder / "v.onnx"))
    config = Path(shutil.copyfile(two_speaker_voice.config, folder / "v.onnx.json"))
    spec = ModelSpec("v", "piper", model, config)
    fleet = MemoryFleet()
    publisher = CardPublisher(fleet, every_s=0)  # type: ignore[arg-type]

    # When nothing changes between checks, the cards are published once
    publisher.refresh([spec])
    publisher.refresh([spec])
    assert fleet.publications == 1 and list(publisher.ids) == ["v"]

    # When the voice's config changes, its new card is published
    config.write_text(config.read_text() + "\n")
    publisher.refresh([spec])
    assert fleet.publications == 2

    # And a model whose files went away has no card
    model.unlink()
    publisher.refresh([spec])
    assert publisher.ids == {}


def test_a_split_model_not_joined_yet_has_the_card_of_the_joined_folder(tmp_path: Path) -> None:
    from stoker.workers.packaged import SplitModel

    # Given a model shipped as pieces (Whisper base's shape: copies + a split model.bin)
    pieces_dir = tmp_path / "pieces"
    pieces_dir.mkdir()
    (pieces_dir / "config.json").write_text('{"layers": 6}')
    (pieces_dir / "vocabulary.txt").write_text("a\nb\n")
    (pieces_dir / "model.bin.part1").write_bytes(b"x" * 300)
    (pieces_dir / "model.bin.part2").write_bytes(b"y" * 200)
    pieces = SplitModel(
        copies=(pieces_dir / "config.json", pieces_dir / "vocabulary.txt"),
        parts=(pieces_dir / "model.bin.part1", pieces_dir / "model.bin.part2"),
        joined="model.bin",
        size=500,
    )
    spec = ModelSpec("base", "whisper", tmp_path / "data" / "models" / "whisper-base")

    # When a worker that has not joined it yet makes its card, and later one that has
    planned = card_of(spec, pieces)
    pieces.build(spec.path)
    built = card_of(spec)

    # Then both describe the same model: fingerprint, sizes and configs
    assert planned.identity == built.identity
    assert spec_from_card(planned).fingerprint == spec.fingerprint
    assert planned.disk_bytes == built.disk_bytes == spec.disk_bytes()
    assert planned.documents == built.documents == {"config.json": {"layers": 6}}
    assert planned.folder and built.folder


def test_audiobook_verification_follows_the_workers_that_would_run_it(
    tmp_path: Path, two_speaker_voice: VoiceFiles
) -> None:
    # Given a book in English voice "duo", two live workers taking its audiobooks (one
    # with Whisper tiny.en, one without) and one taking another voice's only
    book = tmp_path / "book.txt"
    book.write_text("Chapter One\n\nIt was a dark night. The keeper climbed the stairs.\n")
    fleet = MemoryFleet()
    duo = cards_of([voice_spec(two_speaker_voice)])
    takes_duo = ("audiobook", model_queue("audiobook", "duo"))
    fleet.join("with", duo, takes_duo, also=("tiny.en",))
    fleet.join("without", duo, takes_duo)
    fleet.join("elsewhere", {}, ("audiobook", model_queue("audiobook", "solo")), also=("base",))

    def planned(**request: Any) -> dict[str, Any]:
        ctx = PrepareContext(load_settings(data_dir=tmp_path / "s"), catalog_with(tmp_path, fleet))
        request = {"path": str(book), "voice": "duo", "formats": ["mp3"], **request}
        return AudiobookCapability().prepare(request, ctx).params

    # Then the default check is not planned: a worker that cannot do it may run the job
    assert "verify_model" not in planned()
    # And one asked for is: a worker can
    assert planned(verify="all")["verify_model"] == "tiny.en"
    # And a model none of them has is refused, whatever other workers have
    with pytest.raises(InvalidInput) as refused:
        planned(verify_model="base")
    assert str(refused.value) == (
        "verify needs the Whisper model 'base', but none of the 2 live worker(s) that run "
        "audiobooks with voice 'duo' can load it; install stoker[transcribe] and the model "
        "on them, pick another with verify_model, or set verify to none."
    )

    # When every worker taking "duo" has tiny.en, the first chapter is checked by default
    fleet.join("without", duo, takes_duo, also=("tiny.en",))
    params = planned()
    assert (params["verify_model"], params["verified_chunks"]) == ("tiny.en", 1)


def test_an_audiobook_worker_publishes_the_whisper_models_it_verifies_with(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from stoker.workers import steering

    catalog = ModelCatalog(load_settings(data_dir=tmp_path))
    # Audiobook borrows Whisper; transcribe serves it (its cards come from its queues)
    assert "tiny.en" in steering.borrowed_models(["audiobook"], catalog)
    assert steering.borrowed_models(["speak", "transcribe"], catalog) == []
    # And without faster-whisper, there is nothing to borrow
    monkeypatch.setattr(steering, "installed_module", lambda module: module != "faster_whisper")
    assert steering.borrowed_models(["audiobook"], catalog) == []
