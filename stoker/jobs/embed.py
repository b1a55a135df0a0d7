"""embed: texts → vectors with a sentence-transformers model.

A job carries one or many texts. They are packed into chunks of at most
CHUNK_TEXTS texts (and CHUNK_BYTES of text, so a task message stays small); each
chunk's output is a float32 ``.npy`` matrix. Assembly stacks them into one file:
``embeddings.parquet`` (columns ``id``, ``embedding``), ``embeddings.npy`` (plus
``ids.json``) or ``embeddings.jsonl`` (``{"id", "embedding"}`` per line).

Embedding is the capability where one text per job is the common case (an API call
per sentence), and a model is ~4× faster on a batch of 64 than one at a time. So it
is *batchable*: the worker buffers many chunks, of many jobs, and calls
:meth:`EmbedCapability.run_chunks` once per model (see queues/batching.py).

Each text's token count (what the model read: its tokenizer, special tokens
included, cut at the model's max_seq_length) is kept beside its vector in the chunk
file (see write_chunk). Assembly writes them as ``tokens`` per line (JSONL) or column
(parquet) and their sum in the artifact's meta; the OpenAI-shaped answers report it
as ``usage``. A text longer than the model's window (max_seq_length) is embedded from
its first tokens only, as sentence-transformers does; its whole length is kept too, so
such a line says ``"truncated": true`` and the manifest counts them with a warning
that `stoker run|get` prints.

Most jobs are one sentence, so the per-job costs are kept low: a small job's output
is built in memory and stored in one write (no scratch folder or file), and a chunk
is raw float32 with a 12-byte header rather than ``.npy`` (whose header parsing cost
more than the vector).
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO, Literal, NamedTuple

from pydantic import BaseModel, Field, model_validator

from stoker.errors import InvalidInput, MissingDependency
from stoker.jobs.base import (
    Artifact,
    AssembleContext,
    ChunkContext,
    ChunkPlan,
    PrepareContext,
    Prepared,
    parse_request,
)
from stoker.jobs.passages import Passage, room_for_text, split_passages
from stoker.storage.keys import content_digest, content_input_key

#: Texts per chunk: big enough to fill a batch, small enough to keep a message small.
CHUNK_TEXTS = 256
#: Bytes of text per chunk, whatever the count: the texts travel in the task message.
CHUNK_BYTES = 256 * 1024
#: Texts per job: a bigger corpus goes in as a batch of jobs (or several jobs).
MAX_TEXTS = 100_000
#: The model's own batch size when encoding one call's texts.
ENCODE_BATCH = 64
#: Ids up to this size (JSON bytes) live in the job record; more are stored as an
#: input that assembly reads: 100,000 line numbers are ~0.9 MB, which every read of
#: the record (status polls, API listings) and the manifest would carry.
IDS_INLINE_BYTES = 16 * 1024
#: Tokens two passages of a split text may share, at most (and never past half one).
MAX_OVERLAP = 128

Format = Literal["jsonl", "npy", "parquet"]
CONTENT_TYPES: dict[str, str] = {
    "jsonl": "application/x-ndjson",
    "npy": "application/octet-stream",
    "parquet": "application/vnd.apache.parquet",
}


class EmbedRequest(BaseModel):
    """What a user may ask of ``embed``: ``text`` or ``texts``, optional ``ids``."""

    model_config = {"extra": "forbid"}

    text: str | None = None
    texts: list[str] | None = None
    ids: list[str] | None = None
    model: str | None = None
    normalize: bool = False
    format: Format = "jsonl"
    # How many texts the model encodes at once; bigger uses more memory.
    batch_size: int = Field(default=ENCODE_BATCH, ge=1, le=1024)
    # Retrieval models are trained with one before each text ("query: " for E5's
    # queries); sentence-transformers' encode(prompt=) puts it there.
    prompt: str | None = Field(default=None, min_length=1, max_length=1000)
    # Texts longer than the model's window as passages that fit it (jobs/passages.py),
    # consecutive ones sharing ``overlap`` tokens; a row per passage.
    split: bool = False
    overlap: int = Field(default=0, ge=0, le=MAX_OVERLAP)

    @model_validator(mode="after")
    def _one_input(self) -> EmbedRequest:
        if (self.text is None) == (self.texts is None):
            raise ValueError("give exactly one of text or texts")
        if self.overlap and not self.split:
            raise ValueError("overlap is the tokens passages share; give it with split")
        if self.split and self.format == "npy":
            raise ValueError(
                "split writes each passage's text id and character span beside its "
                "vector; give format jsonl or parquet"
            )
        return self

    def all_texts(self) -> list[str]:
        return [self.text] if self.text is not None else list(self.texts or [])


def _import_numpy() -> Any:
    try:
        import numpy
    except ImportError as exc:
        raise MissingDependency("numpy", "embed", "Embedding text") from exc
    return numpy


def check_texts(texts: list[str], ids: list[str] | None, limit_bytes: int) -> list[str]:
    """The ids of ``texts`` ("0", "1", ... unless given); InvalidInput naming the bad item."""
    if not texts:
        raise InvalidInput("texts is empty; give at least one text to embed.")
    if len(texts) > MAX_TEXTS:
        raise InvalidInput(
            f"{len(texts)} texts is over the {MAX_TEXTS} per job limit; split them over "
            f"several jobs (or a batch)."
        )
    for i, text in enumerate(texts):
        if not text.strip():
            raise InvalidInput(f"text {i} is empty; remove it or give it some words.")
        if len(text.encode("utf-8")) > limit_bytes:
            raise InvalidInput(f"text {i} is over the {limit_bytes} byte limit (max_text_bytes).")
    if ids is None:
        return [str(i) for i in range(len(texts))]
    if len(ids) != len(texts):
        raise InvalidInput(f"ids has {len(ids)} entries for {len(texts)} texts; give one per text.")
    if len(set(ids)) != len(ids):
        raise InvalidInput("ids must be unique; two texts share an id.")
    return ids


def pack(texts: list[str]) -> list[tuple[int, int]]:
    """(start, end) ranges of ``texts``: ≤ CHUNK_TEXTS texts and ≤ CHUNK_BYTES each.

    A single text over CHUNK_BYTES gets a chunk of its own.
    """
    ranges, start, size = [], 0, 0
    for i, text in enumerate(texts):
        n = len(text.encode("utf-8"))
        if i > start and (i - start >= CHUNK_TEXTS or size + n > CHUNK_BYTES):
            ranges.append((start, i))
            start, size = i, 0
        size += n
    ranges.append((start, len(texts)))
    return ranges


#: One chunk of a batched call: its job's params, its payload and its context.
EmbedItem = tuple[dict[str, Any], dict[str, Any], ChunkContext]


class EmbedCapability:
    kind: str = "embed"
    backend: str | None = "sentence-transformers"
    chunk_ext: str = "vec"  # see write_chunk
    chunk_content_type: str = "application/octet-stream"
    work_stage: str = "embed"
    engines: tuple[tuple[str, str], ...] = (("sentence_transformers", "embed"),)
    # Chunks of many jobs are run together (queues/batching.py).
    batchable: bool = True

    def prepare(self, request: dict[str, Any], ctx: PrepareContext) -> Prepared:
        req: EmbedRequest = parse_request(request, EmbedRequest)
        texts = req.all_texts()
        ids = check_texts(texts, req.ids, ctx.settings.max_text_bytes)
        name = req.model or ctx.settings.default_embed_model
        spec = ctx.catalog.get(name, backend=self.backend)
        # Only when given: the chunks of a job without one keep the identity they had.
        prompt = {} if req.prompt is None else {"prompt": req.prompt}
        split = {"split": True, "overlap": req.overlap} if req.split else {}
        chunks = [
            ChunkPlan(
                payload={"texts": texts[a:b]},
                identity={
                    "model": spec.fingerprint,
                    "normalize": req.normalize,
                    "texts": texts[a:b],
                    **prompt,
                    **split,
                },
            )
            for a, b in pack(texts)
        ]
        params: dict[str, Any] = {
            "model": name,
            "normalize": req.normalize,
            "format": req.format,
            "batch_size": req.batch_size,
            "count": len(texts),
            **prompt,
            **split,
        }
        # Ids stay out of the messages; they are only needed by assembly.
        uploads = _place_ids(params, None if req.ids is None else ids)
        return Prepared(params=params, model=name, chunks=chunks, uploads=uploads)

    def run_chunk(
        self, model: Any, params: dict[str, Any], payload: dict[str, Any], ctx: ChunkContext
    ) -> None:
        self.run_chunks(model, [(params, payload, ctx)])

    def run_chunks(self, model: Any, items: list[EmbedItem]) -> None:
        """Encode the texts of every item in one call per ``normalize`` and ``prompt``
        setting (most jobs share one).

        All ``items`` share ``model``. Each item's vectors go to its ``ctx.out``.
        """
        numpy = _import_numpy()
        groups: dict[tuple[bool, str | None], list[EmbedItem]] = {}
        for item in items:
            params = item[0]
            groups.setdefault((bool(params["normalize"]), params.get("prompt")), []).append(item)
        for (normalize, prompt), group in groups.items():
            # Per item: what it embeds (its texts, or their passages) and the passages.
            # The room a passage has depends on the prompt only: worked out once a group.
            splits = any(params.get("split") for params, _, _ in group)
            room = room_for_text(model, prompt) if splits else 0
            pieces = [_pieces(model, params, payload, room) for params, payload, _ in group]
            texts = [t for item_texts, _ in pieces for t in item_texts]
            vectors = model.encode(
                texts,
                prompt=prompt,
                batch_size=max(int(p.get("batch_size", ENCODE_BATCH)) for p, _, _ in group),
                normalize_embeddings=normalize,
                convert_to_numpy=True,
                show_progress_bar=False,
            ).astype(numpy.float32, copy=False)
            # What the model read: encode puts the prompt before each text.
            read = [(prompt or "") + t for t in texts]
            tokens = token_counts(model, read)
            lengths = text_lengths(model, read, tokens)
            start = 0
            for (_, payload, ctx), (item_texts, passages) in zip(group, pieces, strict=True):
                end = start + len(item_texts)
                rows = slice(start, end)
                spans = None if passages is None else (len(payload["texts"]), passages)
                write_chunk(ctx.out, vectors[rows], tokens[rows], lengths[rows], spans)
                start = end

    def assemble(self, params: dict[str, Any], ctx: AssembleContext) -> list[Artifact]:
        numpy = _import_numpy()
        parts = [read_chunk(f) for f in ctx.chunk_files]
        vectors = numpy.concatenate([p.vectors for p in parts]) if len(parts) > 1 else parts[0][0]
        tokens = [n for p in parts for n in p.tokens]
        cut = [full > n for p in parts for n, full in zip(p.tokens, p.lengths, strict=True)]
        ids = _ids(params, ctx.inputs) or [str(i) for i in range(params.get("count", len(vectors)))]
        rows = _passage_rows(parts, ids) if params.get("split") else None
        fmt = params["format"]
        meta = {"count": len(vectors), "dimensions": int(vectors.shape[1])}
        if rows is not None:  # a row per passage, under its text's id
            ids = [ids[r.source] for r in rows]
            meta |= {"texts": params["count"], "overlap": params["overlap"]}
        meta |= {"model": params["model"], "normalized": params["normalize"]}
        meta |= {"prompt": params["prompt"]} if params.get("prompt") else {}
        meta["tokens"] = sum(tokens)
        meta |= _cut_meta(ids, tokens, cut)
        # One chunk's worth is a few hundred KB at most: built in memory.
        name = f"embeddings.{fmt}"
        path = None if len(vectors) <= CHUNK_TEXTS else ctx.workdir / name
        data = None
        with io.BytesIO() if path is None else path.open("wb") as f:
            if fmt == "jsonl":
                write_jsonl(f, ids, vectors, tokens, cut, rows)
            elif fmt == "parquet":
                write_parquet(f, ids, vectors, tokens, cut, rows)
            else:
                numpy.save(f, vectors, allow_pickle=False)
            if isinstance(f, io.BytesIO):
                data = f.getvalue()
        artifacts = [Artifact(name, path, CONTENT_TYPES[fmt], meta, data=data)]
        if fmt == "npy":
            ids_json = json.dumps(ids).encode("utf-8")
            artifacts.append(Artifact("ids.json", None, "application/json", data=ids_json))
        return artifacts


def _pieces(
    model: Any, params: dict[str, Any], payload: dict[str, Any], room: int
) -> tuple[list[str], list[Passage] | None]:
    """What one chunk embeds: its texts, or with ``split`` their passages of at most
    ``room`` tokens (and those passages)."""
    texts: list[str] = payload["texts"]
    if not params.get("split"):
        return texts, None
    passages = split_passages(model, texts, room, int(params.get("overlap", 0)))
    return [texts[p.source][p.start : p.end] for p in passages], passages


class PassageRow(NamedTuple):
    """One row of a split job's output: text ``source`` (its index in the job), the
    passage's number in that text and its character span."""

    source: int
    passage: int
    start: int
    end: int


def _passage_rows(parts: list[ChunkVectors], ids: list[str]) -> list[PassageRow]:
    """The rows of a split job, from its chunks' spans (a chunk knows its own texts
    only: each is offset by the texts of the chunks before it)."""
    rows: list[PassageRow] = []
    first = 0
    for part in parts:
        if part.spans is None:  # written without split: the key says otherwise
            raise ValueError("an embed chunk of a split job has no passage spans")
        count, spans = part.spans
        numbers: dict[int, int] = {}
        for p in spans:
            numbers[p.source] = numbers.get(p.source, -1) + 1
            rows.append(PassageRow(first + p.source, numbers[p.source], p.start, p.end))
        first += count
    if first != len(ids):
        raise ValueError(f"the chunks of a split job hold {first} texts, not {len(ids)}")
    return rows


#: Ids of cut texts named in the manifest (and the warning) at most; the count is whole.
CUT_IDS_SHOWN = 20


def _cut_meta(ids: list[str], tokens: list[int], cut: list[bool]) -> dict[str, Any]:
    """The manifest's word on texts longer than the model's window: how many were cut,
    the first ids, and a sentence saying what to do. {} when none was."""
    cut_ids = [i for i, was_cut in zip(ids, cut, strict=True) if was_cut]
    if not cut_ids:
        return {}
    window = max(n for n, was_cut in zip(tokens, cut, strict=True) if was_cut)
    shown = ", ".join(cut_ids[:CUT_IDS_SHOWN]) + (", …" if len(cut_ids) > CUT_IDS_SHOWN else "")
    return {
        "truncated": len(cut_ids),
        "truncated_ids": cut_ids[:CUT_IDS_SHOWN],
        "warning": (
            f"{len(cut_ids)} of {len(ids)} texts were longer than the model's window of "
            f"{window} tokens and were embedded from their first {window} tokens only "
            f"(ids: {shown}); embed with split (--split) for a row per passage that fits."
        ),
    }


def _place_ids(params: dict[str, Any], ids: list[str] | None) -> dict[str, Path | bytes]:
    """Put ``ids`` in ``params`` (``ids``), or, past IDS_INLINE_BYTES, in an input
    named by ``ids_key``; returns the uploads that needs."""
    params["ids"] = ids
    if ids is None:
        return {}
    data = json.dumps(ids).encode("utf-8")
    if len(data) <= IDS_INLINE_BYTES:
        return {}
    key = content_input_key(content_digest(data), "json")
    params.update(ids=None, ids_key=key, assemble_inputs=[key])
    return {key: data}


def _ids(params: dict[str, Any], inputs: Mapping[str, Path]) -> list[str] | None:
    """The job's ids, from its params or the input that holds them; None if not given."""
    key = params.get("ids_key")
    if key is None:
        return params.get("ids")
    return [str(i) for i in json.loads(inputs[key].read_bytes())]


def token_counts(model: Any, texts: list[str]) -> list[int]:
    """How many tokens ``model`` reads of each text: the tokenization encode runs per
    batch (special tokens in, cut at max_seq_length), the padding left out.

    A second tokenizer pass rather than a hook into encode (whose batches are sorted
    by length): it costs under 1 % of the encode time (256 sentences, MiniLM, CPU).
    """
    # sentence-transformers ≥ 5 calls it ``preprocess`` (``tokenize`` warns).
    tokenize = getattr(model, "preprocess", None) or model.tokenize
    features = tokenize(texts)
    return [int(n) for n in features["attention_mask"].sum(dim=1).tolist()]


def text_lengths(model: Any, texts: list[str], read: list[int]) -> list[int]:
    """How many tokens each text has, whole: ``read`` (:func:`token_counts`) where the
    model read it all, the untruncated tokenization where it stopped at its window.

    Only texts that filled the window are tokenized again, so a batch of sentences
    costs nothing more; a 1 MB text, one tokenizer pass (~0.1 s)."""
    window = getattr(model, "max_seq_length", None)
    full = [i for i, n in enumerate(read) if window and n >= window]
    lengths = list(read)
    if full:
        # verbose=False: transformers would log that the text is longer than the model.
        found = model.tokenizer(
            [texts[i] for i in full], add_special_tokens=True, truncation=False, verbose=False
        )["input_ids"]
        for i, ids in zip(full, found, strict=True):
            lengths[i] = len(ids)
    return lengths


#: A split chunk's passages: how many texts the chunk has, and each row's passage.
Spans = tuple[int, list[Passage]]


class ChunkVectors(NamedTuple):
    """A chunk file's contents (:func:`read_chunk`); a row per text, or per passage."""

    vectors: Any  # float32 (rows, dimensions)
    tokens: list[int]  # per row: the tokens the model read
    lengths: list[int]  # per row: its tokens, whole (more than ``tokens`` if it was cut)
    spans: Spans | None = None  # a split chunk's texts and passages


#: A chunk file: this magic, rows and dimensions (uint32 little-endian), the vectors
#: (float32, row-major), each row's token count as read, then its whole length in
#: tokens (int32 each). A split chunk (CHUNK_MAGIC_SPLIT) has its count of texts in
#: the header too, and after the lengths each row's passage: its text's index in the
#: chunk, start and end (int32 each). Chunks of the first format (CHUNK_MAGIC_V1,
#: without the lengths) are still read, as not cut: a kept chunk stays valid.
CHUNK_MAGIC = b"STKW"
CHUNK_MAGIC_SPLIT = b"STKP"
CHUNK_MAGIC_V1 = b"STKV"
_HEADER = struct.Struct("<4sII")
_TEXTS = struct.Struct("<I")


def write_chunk(
    path: Path,
    vectors: Any,
    tokens: list[int],
    lengths: list[int] | None = None,
    spans: Spans | None = None,
) -> None:
    """Write a chunk file (see CHUNK_MAGIC) of ``vectors``, their rows' ``tokens`` as
    read, ``lengths`` (as ``tokens`` when not given: none was cut) and, for a split
    chunk, its ``spans``."""
    numpy = _import_numpy()
    rows, dims = vectors.shape
    with path.open("wb") as f:
        f.write(_HEADER.pack(CHUNK_MAGIC if spans is None else CHUNK_MAGIC_SPLIT, rows, dims))
        if spans is not None:
            f.write(_TEXTS.pack(spans[0]))
        f.write(numpy.ascontiguousarray(vectors, dtype="<f4").tobytes())
        f.write(numpy.asarray(tokens, dtype="<i4").tobytes())
        f.write(numpy.asarray(tokens if lengths is None else lengths, dtype="<i4").tobytes())
        if spans is not None:
            table = [(p.source, p.start, p.end) for p in spans[1]]
            f.write(numpy.asarray(table, dtype="<i4").reshape(rows, 3).tobytes())


def read_chunk(path: Path) -> ChunkVectors:
    """The vectors, token counts, lengths and spans of a chunk file (:func:`write_chunk`)."""
    numpy = _import_numpy()
    data = path.read_bytes()
    magic, rows, dims = _HEADER.unpack_from(data) if len(data) >= _HEADER.size else (b"", 0, 0)
    # int32 columns after the vectors, and where the vectors start
    columns, at = {CHUNK_MAGIC: (2, 0), CHUNK_MAGIC_V1: (1, 0), CHUNK_MAGIC_SPLIT: (5, 4)}.get(
        magic, (0, 0)
    )
    at += _HEADER.size
    if not columns or len(data) != at + rows * dims * 4 + columns * rows * 4:
        raise ValueError(f"{path} is not a whole embed chunk ({len(data)} bytes)")
    vectors = numpy.frombuffer(data, "<f4", rows * dims, at).reshape(rows, dims)
    at += rows * dims * 4
    tokens = numpy.frombuffer(data, "<i4", rows, at).tolist()
    lengths = numpy.frombuffer(data, "<i4", rows, at + rows * 4).tolist() if columns > 1 else tokens
    spans = None
    if magic == CHUNK_MAGIC_SPLIT:
        (texts,) = _TEXTS.unpack_from(data, _HEADER.size)
        table = numpy.frombuffer(data, "<i4", rows * 3, at + rows * 8).reshape(rows, 3)
        spans = (texts, [Passage(*map(int, row)) for row in table])
    return ChunkVectors(vectors, tokens, lengths, spans)


def write_jsonl(
    f: BinaryIO,
    ids: list[str],
    vectors: Any,
    tokens: list[int],
    cut: list[bool] | None = None,
    passages: list[PassageRow] | None = None,
) -> None:
    """One ``{"id", "embedding", "tokens"}`` line per vector, with ``"truncated": true``
    on the lines of texts cut at the model's window (``cut``); a split job's lines
    also name their ``passage`` and its ``start`` and ``end`` in the text (``passages``).

    Floats are written as the shortest text that reads back as the same float32
    (orjson, from the array itself): 25× faster than ``json.dumps`` of the floats as
    Python float64s, which was a tenth of a one-sentence job's cost, and half the bytes.
    """
    try:
        import orjson
    except ImportError as exc:
        raise MissingDependency("orjson", "embed", "Writing JSONL embeddings") from exc
    option = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_APPEND_NEWLINE
    rows = _import_numpy().ascontiguousarray(vectors, dtype="float32")  # orjson needs both
    for i, (id_, vector, count) in enumerate(zip(ids, rows, tokens, strict=True)):
        line: dict[str, Any] = {"id": id_}
        if passages is not None:
            row = passages[i]
            line |= {"passage": row.passage, "start": row.start, "end": row.end}
        line |= {"embedding": vector, "tokens": count}
        if cut and cut[i]:
            line["truncated"] = True
        f.write(orjson.dumps(line, option=option))


def write_parquet(
    f: BinaryIO,
    ids: list[str],
    vectors: Any,
    tokens: list[int],
    cut: list[bool] | None = None,
    rows: list[PassageRow] | None = None,
) -> None:
    """Columns ``id`` (string), ``embedding`` (fixed-size list of float32), ``tokens``
    (int32) and ``truncated`` (bool: the text was cut at the model's window); a split
    job's also ``passage``, ``start`` and ``end`` (int32) after ``id``."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise MissingDependency("pyarrow", "embed", "Writing parquet") from exc
    flat = pa.array(vectors.reshape(-1), type=pa.float32())
    column = pa.FixedSizeListArray.from_arrays(flat, int(vectors.shape[1]))
    columns = {"id": pa.array(ids, pa.string())}
    if rows is not None:
        for name in ("passage", "start", "end"):
            columns[name] = pa.array([getattr(r, name) for r in rows], pa.int32())
    columns["embedding"] = column
    columns["tokens"] = pa.array(tokens, pa.int32())
    columns["truncated"] = pa.array(cut or [False] * len(ids), pa.bool_())
    pq.write_table(pa.table(columns), f)


def read_vectors(data: bytes, fmt: str) -> tuple[list[str], list[list[float]]]:
    """Ids and vectors from an ``embeddings.<fmt>`` file's bytes (jsonl or parquet)."""
    if fmt == "jsonl":
        rows = [json.loads(line) for line in data.decode("utf-8").splitlines() if line]
        return [r["id"] for r in rows], [r["embedding"] for r in rows]
    if fmt == "parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(io.BytesIO(data))
        return table.column("id").to_pylist(), table.column("embedding").to_pylist()
    raise ValueError(f"read_vectors reads jsonl or parquet, not {fmt!r}")
