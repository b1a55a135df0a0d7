"""The scheduler's decisions, from plain views of backlog (no broker)."""

from __future__ import annotations

from pathlib import Path

from stoker.config import ModelEntry, Settings
from stoker.queues.app import model_queue, model_slug, queue_kind
from stoker.queues.records import new_record
from stoker.queues.submit import _queue
from stoker.workers.catalog import ModelCatalog
from stoker.workers.scheduler import Backlog, Policy, View, choose
from stoker.workers.steering import candidate_queues

POLICY = Policy(max_wait_s=300, share_backlog=10)


def q(model: str | None, waiting: int = 0, age: float = 0.0) -> Backlog:
    return Backlog(model_queue("speak", model), model, waiting, age)


def view(
    *backlogs: Backlog, held: frozenset[str] = frozenset(), fits=lambda m: True, elsewhere=None
):  # type: ignore[no-untyped-def]
    return View(list(backlogs), frozenset(held), fits, elsewhere or {})


def test_a_held_model_with_backlog_is_kept_even_when_another_has_more() -> None:
    # Given the worker holds a, which has work, and b has more work waiting
    choice = choose(view(q(None), q("a", 2), q("b", 50), held={"a"}), POLICY)
    # Then it keeps consuming a's queue (and the plain queue), not b's
    assert choice.queues == {"speak", "speak.m.a"}
    assert (choice.reason, choice.target) == ("warm", "a")


def test_when_the_held_model_runs_dry_it_switches_to_the_most_waiting_work() -> None:
    choice = choose(view(q(None), q("a", 0), q("b", 5), q("c", 9), held={"a"}), POLICY)
    # The held model's empty queue stays consumed: new work for it costs no load
    assert choice.queues == {"speak", "speak.m.a", "speak.m.c"}
    assert (choice.reason, choice.target) == ("switch", "c")


def test_equal_backlogs_go_to_the_oldest() -> None:
    choice = choose(view(q("b", 5, age=3), q("c", 5, age=9)), POLICY)
    assert choice.target == "c"


def test_a_starving_queue_is_served_alone_even_if_it_forces_a_switch() -> None:
    # Given a busy held model and a queue whose oldest job waited past max_wait_s
    choice = choose(view(q(None), q("a", 40, age=10), q("b", 1, age=301), held={"a"}), POLICY)
    assert choice.queues == {"speak", "speak.m.b"}
    assert (choice.reason, choice.target) == ("starving", "b")


def test_of_several_starving_queues_the_oldest_goes_first() -> None:
    choice = choose(view(q("a", 1, age=400), q("b", 1, age=900)), POLICY)
    assert choice.target == "b"


def test_a_model_that_does_not_fit_is_not_switched_to_until_it_starves() -> None:
    fits = lambda m: m != "huge"  # noqa: E731
    young = choose(view(q("huge", 9, age=5), q("a", 1), fits=fits), POLICY)
    assert young.target == "a"
    old = choose(view(q("huge", 9, age=301), q("a", 1), fits=fits), POLICY)
    assert old.target == "huge"  # taken, so its jobs fail with "too large" instead of waiting


def test_starving_work_that_does_not_fit_here_is_left_to_a_worker_it_fits() -> None:
    fits = lambda m: m != "huge"  # noqa: E731
    starving = [q("huge", 9, age=301), q("a", 1)]
    elsewhere = View(starving, frozenset(), fits, {}, fits_elsewhere=lambda b: True)
    assert choose(elsewhere, POLICY).target == "a"
    nowhere = View(starving, frozenset(), fits, {}, fits_elsewhere=lambda b: False)
    assert choose(nowhere, POLICY).target == "huge"
    # work that fits here is taken when it starves, whoever else could run it
    fits_here = View(starving, frozenset(), lambda m: True, {}, fits_elsewhere=lambda b: True)
    assert choose(fits_here, POLICY).target == "huge"


def test_a_queue_another_worker_serves_is_joined_only_when_deep() -> None:
    elsewhere = {"speak.m.b": 1}
    shallow = choose(view(q("b", 9), elsewhere=elsewhere), POLICY)
    assert (shallow.reason, shallow.queues) == ("idle", frozenset())
    deep = choose(view(q("b", 10), elsewhere=elsewhere), POLICY)
    assert deep.target == "b"
    # a queue the worker holds the model of is kept whatever others do
    held = choose(view(q("b", 3), held={"b"}, elsewhere=elsewhere), POLICY)
    assert held.queues == {"speak.m.b"}


def test_nothing_waiting_keeps_the_plain_and_held_queues() -> None:
    choice = choose(view(q(None), q("a"), q("b"), held={"a"}), POLICY)
    assert (choice.reason, choice.queues) == ("idle", frozenset({"speak", "speak.m.a"}))


def test_queue_names_are_safe_and_distinct() -> None:
    assert model_queue("speak", "en_US-joe-medium") == "speak.m.en_US-joe-medium"
    assert model_queue("echo", None) == "echo"
    odd = model_slug("org/model name")
    assert odd.startswith("org_model_name-") and len(odd) == len("org_model_name-") + 8
    assert model_slug("org/model_name") != model_slug("org_model_name")
    assert queue_kind("embed.m.all-MiniLM-L6-v2") == "embed"
    assert queue_kind("echo") == "echo"


def test_a_model_named_by_its_path_gets_a_queue_only_where_workers_can_find_it(
    tmp_path: Path,
) -> None:
    # A path's queue name is a model queue like any other
    assert model_queue("generate", "/srv/models/qwen3-8b.gguf").startswith(
        "generate.m._srv_models_qwen3-8b.gguf-"
    )
    # On the embedded broker and with fifo scheduling, where workers do not discover
    # path queues (queues/path_queues.py), a path job goes on the capability's queue
    record = new_record(kind="generate", owner="t", params={}, model="/srv/x.gguf")
    assert _queue(Settings(data_dir=tmp_path), record) == "generate"
    fifo = Settings(data_dir=tmp_path, broker_url="redis://127.0.0.1:1/0", scheduling="fifo")
    assert _queue(fifo, record) == "generate"
    # And a model configured under a path name is a worker's candidate on that queue
    path = str(tmp_path / "x.gguf")
    settings = Settings(
        data_dir=tmp_path, models={path: ModelEntry(backend="llama", path=Path(path))}
    )
    queues = candidate_queues(["generate"], ModelCatalog(settings))
    assert (model_queue("generate", path), path) in queues
    assert [q for q, _ in queues].count("generate") == 1
