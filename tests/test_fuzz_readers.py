"""Property-based tests (hypothesis) of every reader of user input and of the service's request models.

For each reader the property is the same: the input either parses correctly or fails with the package's own error
type (DataError / ConfigError, or 422 from the service) naming the file and the record; never another exception,
a hang or a silent drop. "No silent drop" is checked by counting: records in = records read + records skipped,
and the strict mode (``skip_bad_records=False``) fails on exactly the first record the lenient mode skipped.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import re
import types
import typing
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from dcd_itr.config import load_config
from dcd_itr.data.karpathy import read_karpathy_json
from dcd_itr.data.pairs import read_pairs
from dcd_itr.errors import ConfigError, DataError
from dcd_itr.models.dual import DualConfig
from dcd_itr.tasks.distill import DistillConfig, LossConfig
from dcd_itr.train import TrainConfig
from search_fixtures import png_bytes, upload

FUZZ = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# Text that includes what breaks naive readers: lone surrogates, NUL, line and paragraph separators,
# combining marks, right-to-left marks and astral characters.
ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=12)
EDGE_TEXT = st.sampled_from(
    ["\ud800", "a\x00b", "\u2028", "x\u0301", "\u202e\u05d0", "\U0001f600", " ", "\ufeffa", "\t\x0b\x0c", "é"]
)
HUGE_INT = "<huge-int>"  # a placeholder: hypothesis cannot print such an integer in its reports
HUGE_TEXT = st.sampled_from(["x" * 200_000, "é" * 70_000])
TEXT = st.one_of(st.text(max_size=12), ANY_TEXT, EDGE_TEXT)
JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.just(HUGE_INT),  # becomes an integer beyond Python's 4300-digit limit for int <-> str conversion
    st.floats(allow_nan=True, allow_infinity=True),
    TEXT,
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: st.one_of(st.lists(children, max_size=3), st.dictionaries(TEXT, children, max_size=3)),
    max_leaves=8,
)


def dump_json(payload: object) -> bytes:
    """JSON text as a user's tool might write it (NaN allowed, lone surrogates escaped, huge integers)."""
    return json.dumps(payload).replace(json.dumps(HUGE_INT), "9" * 5000).encode("utf-8")


def record_locators(messages: list[str], pattern: str) -> list[str]:
    """The first match of ``pattern`` in each message (those that have one)."""
    return [match.group(0) for message in messages for match in [re.search(pattern, message)] if match]


# ----------------------------------------------------------------------------- Karpathy JSON

SPLIT_VALUES = st.one_of(
    st.sampled_from(["train", "val", "test", "restval"]), st.sampled_from(["dev", ""]), TEXT
)
SENTENCE = st.one_of(
    st.fixed_dictionaries(
        {"raw": st.one_of(st.sampled_from(["a dog", "  a cat  ", "x"]), TEXT, JSON_SCALARS)}
    ),
    JSON_VALUES,
)
KARPATHY_RECORD = st.one_of(
    st.fixed_dictionaries(
        {
            "filename": st.one_of(st.sampled_from(["a.jpg", "b.jpg", "c.png"]), TEXT, JSON_SCALARS),
            "split": SPLIT_VALUES,
            "sentences": st.one_of(st.lists(SENTENCE, min_size=1, max_size=3), JSON_VALUES),
        },
        optional={
            "imgid": st.one_of(st.integers(0, 3), TEXT, JSON_SCALARS),  # small range: duplicate ids
            "filepath": st.one_of(st.sampled_from(["", "val2014", "train2014"]), TEXT, JSON_SCALARS),
            "sentids": JSON_VALUES,
        },
    ),
    JSON_VALUES,
)


def read_karpathy_both_ways(path: Path):
    """(lenient result or DataError, strict result or DataError) of one file."""
    outcomes = []
    for skip in (True, False):
        try:
            outcomes.append(read_karpathy_json(path, check_files=False, skip_bad_records=skip))
        except DataError as error:
            assert str(path) in str(error)
            outcomes.append(error)
    return outcomes


@FUZZ
@given(records=st.lists(KARPATHY_RECORD, max_size=6), extra=st.dictionaries(TEXT, JSON_VALUES, max_size=2))
def test_karpathy_reader_reads_or_names_every_record(tmp_path_factory, records, extra):
    path = tmp_path_factory.mktemp("karpathy") / "dataset_fuzz.json"
    path.write_bytes(dump_json({**extra, "images": records}))
    lenient, strict = read_karpathy_both_ways(path)
    if isinstance(lenient, DataError):  # only when nothing at all was usable
        assert "no usable images" in str(lenient) or "beyond the parser's limits" in str(lenient)
        assert isinstance(strict, DataError)
        return
    splits, report = lenient
    assert report.records_read + len(report.skipped) == len(records)  # no silent drop
    assert sum(split.num_images for split in splits.values()) == report.records_read
    skipped = [int(i) for i in record_locators(report.skipped, r"(?<=images\[)\d+(?=\])")]
    assert len(skipped) == len(report.skipped) and all(str(path) in m for m in report.skipped)
    read = [record for index, record in enumerate(records) if index not in skipped]
    captions = sorted(c for split in splits.values() for c in split.captions)
    assert captions == sorted(s["raw"].strip() for r in read for s in r["sentences"])
    assert all(isinstance(c, str) and c and c.encode("utf-8") for c in captions)
    if report.skipped:
        assert isinstance(strict, DataError) and str(strict) == report.skipped[0]
    else:
        assert not isinstance(strict, DataError) and strict[1].records_read == len(records)


@FUZZ
@given(
    data=st.one_of(st.binary(max_size=200), st.builds(lambda t: t.encode("utf-8", "surrogatepass"), ANY_TEXT))
)
def test_karpathy_reader_on_arbitrary_bytes(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("bytes") / "dataset_bytes.json"
    path.write_bytes(data)
    for outcome in read_karpathy_both_ways(path):
        assert isinstance(outcome, DataError) or outcome[1].records_read >= 1


@pytest.mark.parametrize(
    "text",
    [
        '{"images": [' * 100_000,  # nesting deeper than the parser's recursion
        '{"images": [], "n": ' + "9" * 5000 + "}",  # an integer over Python's digit limit
        '{"images": [{"filename": "a.jpg", "imgid": ' + "1" * 5000 + "}]}",
    ],
    ids=["deep", "huge-int", "huge-imgid"],
)
def test_karpathy_reader_survives_parser_limits(tmp_path, text):
    path = tmp_path / "dataset_limits.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DataError) as error:
        read_karpathy_json(path, check_files=False)
    assert str(path) in str(error.value)


# ----------------------------------------------------------------------------- JSONL / CSV pairs

IMAGES = st.sampled_from(["a.jpg", "b.jpg", "sub/c.png"])  # few images: captions group, duplicates happen
CAPTIONS = st.sampled_from(["a dog", "a cat", " a dog ", "red"])
PAIR = st.fixed_dictionaries(
    {"image": st.one_of(IMAGES, TEXT, JSON_SCALARS), "caption": st.one_of(CAPTIONS, TEXT, JSON_SCALARS)},
    optional={"split": SPLIT_VALUES, "other": JSON_VALUES},
)
JSONL_LINE = st.one_of(
    st.builds(lambda record: dump_json(record).decode("utf-8"), PAIR),
    st.builds(lambda value: dump_json(value).decode("utf-8"), JSON_VALUES),
    st.text(st.characters(exclude_characters="\r\n", exclude_categories=("Cs",)), max_size=20),
    st.builds(lambda caption: json.dumps({"image": "a.jpg", "caption": caption}), HUGE_TEXT),
    st.just(""),
)


def read_pairs_both_ways(path: Path):
    """(lenient result or DataError, strict result or DataError) of one pairs file."""
    outcomes = []
    for skip in (True, False):
        try:
            outcomes.append(read_pairs(path, check_files=False, skip_bad_records=skip))
        except DataError as error:
            assert str(path) in str(error)
            outcomes.append(error)
    return outcomes


def check_pairs_outcomes(path: Path, records_in: int, lenient, strict) -> None:
    """The pairs reader's property (see the module docstring) for one file of ``records_in`` records."""
    if isinstance(lenient, DataError):
        file_level = ("no usable image-caption pairs", "CSV header", "malformed CSV")  # named, not skippable
        assert any(reason in str(lenient) for reason in file_level), str(lenient)
        assert isinstance(strict, DataError)
        return
    splits, report = lenient
    assert report.records_read + len(report.skipped) == records_in  # no silent drop
    assert sum(split.num_captions for split in splits.values()) == report.records_read
    assert len(record_locators(report.skipped, r"line \d+")) == len(report.skipped)
    for split in splits.values():
        for image_id in split.image_ids:
            image_id.encode("utf-8")  # every id survives the fingerprints and JSON files made from it
        for captions in split.image_to_captions:
            texts = [split.captions[i] for i in captions]
            assert len(texts) == len(set(texts)) and all(t and t == t.strip() for t in texts)
    if report.skipped:
        assert isinstance(strict, DataError) and str(strict) == report.skipped[0]
    else:
        assert not isinstance(strict, DataError) and strict[1].records_read == records_in


@FUZZ
@given(lines=st.lists(JSONL_LINE, max_size=8))
def test_jsonl_pairs_reader_reads_or_names_every_line(tmp_path_factory, lines):
    path = tmp_path_factory.mktemp("jsonl") / "pairs.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    records_in = sum(1 for line in lines if line.strip())
    check_pairs_outcomes(path, records_in, *read_pairs_both_ways(path))


CSV_TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)  # a UTF-8 file holds no surrogates
CSV_CELL = st.one_of(IMAGES, CAPTIONS, st.sampled_from(["train", "val", "dev", ""]), CSV_TEXT, HUGE_TEXT)


@FUZZ
@given(
    header=st.sampled_from(
        [["image", "caption"], ["image", "caption", "split"], ["caption", "image"], ["img"]]
    ),
    rows=st.lists(st.lists(CSV_CELL, min_size=1, max_size=4), max_size=6),
)
def test_csv_pairs_reader_reads_or_names_every_row(tmp_path_factory, header, rows):
    rows = [row for row in rows if any(cell for cell in row)]  # csv skips blank rows: not records
    assume(all(not (len(row) == 1 and not row[0].strip("\r\n ")) for row in rows))
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    path = tmp_path_factory.mktemp("csv") / "pairs.csv"
    path.write_text(buffer.getvalue(), encoding="utf-8")
    check_pairs_outcomes(path, len(rows), *read_pairs_both_ways(path))


@FUZZ
@given(data=st.binary(max_size=200), suffix=st.sampled_from([".jsonl", ".csv"]))
def test_pairs_reader_on_arbitrary_bytes(tmp_path_factory, data, suffix):
    path = tmp_path_factory.mktemp("pairbytes") / f"pairs{suffix}"
    path.write_bytes(data)
    read_pairs_both_ways(path)  # asserts the only exception is a DataError naming the file


# ----------------------------------------------------------------------------- YAML configs


def conforms(value: object, annotation: object) -> bool:
    """Whether ``value`` has the type the config field is annotated with (what a loaded config promises)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if dataclasses.is_dataclass(annotation):
        hints = typing.get_type_hints(annotation)
        return isinstance(value, annotation) and all(
            conforms(getattr(value, f.name), hints[f.name]) for f in dataclasses.fields(annotation)
        )
    if origin in (typing.Union, types.UnionType):
        return any(conforms(value, option) for option in args)
    if origin is list:
        return isinstance(value, list) and all(conforms(item, args[0]) for item in value)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return isinstance(value, tuple) and all(conforms(item, args[0]) for item in value)
        return isinstance(value, tuple) and len(value) == len(args) and all(map(conforms, value, args))
    if origin is dict:
        return isinstance(value, dict)
    if annotation is typing.Any:
        return True
    if annotation is type(None):
        return value is None
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, annotation)


def field_names(cls: type) -> list[str]:
    """The field names of a config dataclass."""
    return [f.name for f in dataclasses.fields(cls)]


def section(cls: type, values: st.SearchStrategy) -> st.SearchStrategy:
    """A mapping with some of ``cls``'s fields (and sometimes a stray key) set to fuzzed values."""
    keys = st.one_of(st.sampled_from(field_names(cls)), TEXT, st.integers(), st.none(), st.booleans())
    return st.dictionaries(keys, values, max_size=4)


YAML_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True),
    st.text(max_size=8),
    st.sampled_from(["dcd", "dual", "image_to_text", "1e-3", "0x10"]),
)
CONFIG_VALUES = st.recursive(
    YAML_SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=6,
)
CONFIG = st.dictionaries(
    st.one_of(st.sampled_from(field_names(DistillConfig)), st.text(max_size=6), st.integers()),
    st.one_of(
        CONFIG_VALUES,
        section(DualConfig, CONFIG_VALUES),
        section(LossConfig, CONFIG_VALUES),
        section(TrainConfig, CONFIG_VALUES),
    ),
    max_size=6,
)
OVERRIDE = st.one_of(
    st.builds(
        lambda key, value: f"{key}={value}",
        st.sampled_from(
            ["train.lr", "train.betas", "dual.embed_dim", "loss.name", "rounds", "x.y.z", "train"]
        ),
        st.one_of(
            st.sampled_from(["3", "0.1", "[1, 2]", "[0.9, 0.99]", "[", "{a: ", "null", "'x'", ":"]),
            st.text(max_size=6),
        ),
    ),
    st.text(max_size=10),
)


@FUZZ
@given(config=CONFIG, overrides=st.lists(OVERRIDE, max_size=2))
def test_config_loads_with_the_declared_types_or_names_the_file(tmp_path_factory, config, overrides):
    path = tmp_path_factory.mktemp("config") / "run.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    try:
        loaded = load_config(path, DistillConfig, overrides)
    except ConfigError as error:
        assert str(error).startswith(str(path)) or str(error).startswith("override"), str(error)
        return
    assert conforms(loaded, DistillConfig), loaded


@FUZZ
@given(
    data=st.one_of(st.binary(max_size=200), st.builds(lambda t: t.encode("utf-8", "surrogatepass"), ANY_TEXT))
)
def test_config_on_arbitrary_bytes(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("configbytes") / "run.yaml"
    path.write_bytes(data)
    try:
        loaded = load_config(path, DistillConfig)
    except ConfigError as error:
        assert str(error).startswith(str(path))
        return
    assert conforms(loaded, DistillConfig)


@pytest.mark.parametrize(
    "text",
    [
        "[" * 50_000,
        "a: " + "[" * 5000 + "]" * 5000,
        "\xff\xfe",
        "{1: 2, b: 3, null: 4}",
        "train:\n  betas: [0.9]\n",
    ],
    ids=["deep", "deep-nested-value", "not-utf8", "mixed-keys", "short-tuple"],
)
def test_config_edge_cases_are_config_errors(tmp_path, text):
    path = tmp_path / "run.yaml"
    path.write_bytes(text.encode("latin-1") if text == "\xff\xfe" else text.encode("utf-8"))
    with pytest.raises(ConfigError) as error:
        load_config(path, DistillConfig)
    assert str(error.value).startswith(str(path))


# ----------------------------------------------------------------------------- the service's request models


def valid_text_query(payload: object) -> bool:
    """The request a text search accepts (ServiceLimits defaults), written independently of the schema."""

    def strict_int(value: object, low: int, high: int) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high

    if not isinstance(payload, dict) or set(payload) - {"query", "k", "rerank"} or "query" not in payload:
        return False
    query = payload["query"]
    if not isinstance(query, str) or not 1 <= len(query) <= 256 or not query.strip():
        return False
    try:
        query.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return strict_int(payload.get("k", 10), 1, 100) and strict_int(payload.get("rerank", 0), 0, 64)


@pytest.fixture(scope="module")
def stub_client():
    """The real app over a stub retriever: only the request models and handlers are under test."""
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from dcd_itr.search.gallery import Gallery
    from dcd_itr.search.retriever import SearchResult
    from dcd_itr.search.service import create_app

    gallery = Gallery("images", [], [], [], [], [], model_fingerprint="stub")
    calls = []

    def search_text(query, k, rerank):
        calls.append((query, k, rerank))
        return SearchResult([], {"total": 0.0})

    retriever = SimpleNamespace(gallery=gallery, index=[], cross=object(), search_text=search_text)
    return TestClient(create_app(retriever)), calls


QUERY_PAYLOAD = st.one_of(
    st.fixed_dictionaries(
        {"query": st.one_of(TEXT, st.text(min_size=250, max_size=260), JSON_SCALARS)},
        optional={
            "k": st.one_of(st.integers(-2, 102), JSON_SCALARS),
            "rerank": st.one_of(st.integers(-2, 66), JSON_SCALARS),
            "extra": JSON_SCALARS,
        },
    ),
    JSON_VALUES,
)


@FUZZ
@given(payload=QUERY_PAYLOAD)
def test_text_query_is_answered_exactly_when_valid(stub_client, payload):
    client, calls = stub_client
    calls.clear()
    body = dump_json(payload)
    response = client.post("/search/text", content=body, headers={"Content-Type": "application/json"})
    if len(body) > 64 * 1024:
        assert response.status_code == 413
    elif b"9" * 4301 in body:
        assert response.status_code in (400, 422)  # the JSON parser's integer limit: "error parsing the body"
    elif valid_text_query(payload):
        assert response.status_code == 200, (payload, response.text)
        assert calls == [(payload["query"], payload.get("k", 10), payload.get("rerank", 0))]
    else:
        assert response.status_code == 422, (payload, response.text)
        assert calls == [] and response.json()["detail"]


@FUZZ
@given(body=st.binary(max_size=300))
def test_arbitrary_request_bytes_are_4xx(stub_client, body):
    client, _ = stub_client
    response = client.post("/search/text", content=body, headers={"Content-Type": "application/json"})
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):
        assert response.status_code in (400, 422), response.text  # 400: not even text (FastAPI's answer)
        return
    assert response.status_code == (200 if valid_text_query(payload) else 422)


@pytest.fixture(scope="module")
def stub_upload_client():
    """The real app over a stub retriever of captions, for image uploads."""
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from dcd_itr.search.gallery import Gallery
    from dcd_itr.search.retriever import SearchResult
    from dcd_itr.search.service import create_app

    gallery = Gallery("captions", [], [], [], [], [], model_fingerprint="stub")
    retriever = SimpleNamespace(
        gallery=gallery, index=[], cross=object(), search_image=lambda *a: SearchResult([], {"total": 0.0})
    )
    return TestClient(create_app(retriever))


@FUZZ
@given(k=st.one_of(st.text(max_size=6), st.integers(-5, 200).map(str)), rerank=st.text(max_size=4))
def test_upload_form_fields_are_validated(stub_upload_client, k, rerank):
    """Form fields of the image upload: integers within bounds or 422 (an empty field means the default)."""

    def as_int(text: str, default: int) -> int | None:
        if text == "":
            return default
        return int(text) if re.fullmatch(r"\s*[+-]?\d+\s*", text, flags=re.ASCII) else None

    response = upload(stub_upload_client, png_bytes(), k=k, rerank=rerank)
    k_value, rerank_value = as_int(k, 10), as_int(rerank, 0)
    if k_value is not None and 1 <= k_value <= 100 and rerank_value is not None and 0 <= rerank_value <= 64:
        assert response.status_code == 200, (k, rerank, response.text)
    else:
        assert response.status_code == 422, (k, rerank, response.text)
