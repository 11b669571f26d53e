"""Tests of :mod:`vift_plugin.data.instructions`: ShareGPT, Alpaca and ``messages`` rows into records."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vift_plugin.data.files import RowError
from vift_plugin.data.instructions import (
    convert_instruction_file,
    convert_instructions,
    instruction_turns,
    instructions_to_messages,
)

datasets.disable_progress_bars()


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


def read_output(path: Path) -> list[dict[str, Any]]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        records: list[dict[str, Any]] = json.loads(text)
        return records
    return [json.loads(line) for line in text.splitlines()]


def convert(tmp_path: Path, rows: list[Any], output: str = "out.jsonl", **kwargs: Any) -> tuple[Any, list[Any]]:
    source = write_jsonl(tmp_path / "in.jsonl", rows)
    report = convert_instruction_file(source, tmp_path / output, **kwargs)
    return report, read_output(tmp_path / output)


def msg(role: str, text: str) -> dict[str, Any]:
    return {"role": role, "content": [{"type": "text", "text": text}]}


def partial_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".partial"))


SHAREGPT = {
    "id": "sg-1",
    "system": "Be brief.",
    "conversations": [
        {"from": "human", "value": "What is 2+2?"},
        {"from": "gpt", "value": "4"},
        {"from": "Human", "value": "And 3+3?"},
        {"from": "chatgpt", "value": "6"},
    ],
}
ALPACA = {
    "id": "al-1",
    "system": "You are a translator.",
    "history": [["Translate 'hi'", "salut"], ["Translate 'yes'", "oui"]],
    "instruction": "Translate the following.",
    "input": "good night",
    "output": "bonne nuit",
}
OPENAI = {
    "id": "oa-1",
    "messages": [
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": [{"type": "text", "text": "Hello"}, {"type": "text", "text": "there"}]},
        {"role": "assistant", "content": "Bonjour"},
    ],
}


# ---------------------------------------------------------------------------------------------- turns


def test_sharegpt_turns_keep_system_and_order() -> None:
    assert instruction_turns(SHAREGPT) == [
        ("system", "Be brief."),
        ("user", "What is 2+2?"),
        ("assistant", "4"),
        ("user", "And 3+3?"),
        ("assistant", "6"),
    ]


def test_sharegpt_system_turn_inside_conversations() -> None:
    row = {
        "conversations": [
            {"from": "system", "value": "Rules."},
            {"from": "user", "value": "q"},
            {"from": "assistant", "value": "a"},
        ]
    }
    assert instruction_turns(row) == [("system", "Rules."), ("user", "q"), ("assistant", "a")]


@pytest.mark.parametrize("system", ["", "   ", None])
def test_blank_system_is_dropped(system: Any) -> None:
    row = {"system": system, "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}
    assert instruction_turns(row) == [("user", "q"), ("assistant", "a")]
    inner = {"conversations": [{"from": "system", "value": system or ""}, *row["conversations"]]}
    assert instruction_turns(inner) == [("user", "q"), ("assistant", "a")]


def test_alpaca_turns() -> None:
    assert instruction_turns(ALPACA) == [
        ("system", "You are a translator."),
        ("user", "Translate 'hi'"),
        ("assistant", "salut"),
        ("user", "Translate 'yes'"),
        ("assistant", "oui"),
        ("user", "Translate the following.\n\ngood night"),
        ("assistant", "bonne nuit"),
    ]


@pytest.mark.parametrize("extra", ["", "   ", None, "absent"])
def test_alpaca_empty_input_is_ignored(extra: Any) -> None:
    row = {"instruction": "Say hi.", "output": "hi"}
    if extra != "absent":
        row["input"] = extra
    assert instruction_turns(row) == [("user", "Say hi."), ("assistant", "hi")]


def test_alpaca_empty_instruction_uses_the_input_alone() -> None:
    row = {"instruction": "", "input": "What is 1+1?", "output": "2"}
    assert instruction_turns(row) == [("user", "What is 1+1?"), ("assistant", "2")]


def test_alpaca_empty_history_and_no_system() -> None:
    row = {"instruction": "q", "input": "", "output": "a", "history": [], "system": ""}
    assert instruction_turns(row) == [("user", "q"), ("assistant", "a")]


def test_messages_turns_with_string_and_text_part_content() -> None:
    assert instruction_turns(OPENAI) == [
        ("system", "Answer in French."),
        ("user", "Hello\nthere"),
        ("assistant", "Bonjour"),
    ]


# ---------------------------------------------------------------------------------------------- records


def test_messages_output_format(tmp_path: Path) -> None:
    report, records = convert(tmp_path, [SHAREGPT, ALPACA, OPENAI])
    assert (report.read, report.written, sum(report.skipped.values())) == (3, 3, 0)
    assert records[0] == {
        "id": "sg-1",
        "messages": [
            msg("system", "Be brief."),
            msg("user", "What is 2+2?"),
            msg("assistant", "4"),
            msg("user", "And 3+3?"),
            msg("assistant", "6"),
        ],
        "images": [],
    }
    assert records[1] == {
        "id": "al-1",
        "messages": [
            msg("system", "You are a translator."),
            msg("user", "Translate 'hi'"),
            msg("assistant", "salut"),
            msg("user", "Translate 'yes'"),
            msg("assistant", "oui"),
            msg("user", "Translate the following.\n\ngood night"),
            msg("assistant", "bonne nuit"),
        ],
        "images": [],
    }
    assert records[2] == {
        "id": "oa-1",
        "messages": [msg("system", "Answer in French."), msg("user", "Hello\nthere"), msg("assistant", "Bonjour")],
        "images": [],
    }


def test_llava_output_format(tmp_path: Path) -> None:
    report, records = convert(tmp_path, [SHAREGPT, ALPACA, OPENAI], output_format="llava")
    assert report.written == 3
    assert records[0] == {
        "id": "sg-1",
        "conversations": [
            {"from": "system", "value": "Be brief."},
            {"from": "human", "value": "What is 2+2?"},
            {"from": "gpt", "value": "4"},
            {"from": "human", "value": "And 3+3?"},
            {"from": "gpt", "value": "6"},
        ],
    }
    assert records[1]["conversations"][-2:] == [
        {"from": "human", "value": "Translate the following.\n\ngood night"},
        {"from": "gpt", "value": "bonne nuit"},
    ]
    assert records[2] == {
        "id": "oa-1",
        "conversations": [
            {"from": "system", "value": "Answer in French."},
            {"from": "human", "value": "Hello\nthere"},
            {"from": "gpt", "value": "Bonjour"},
        ],
    }
    for record in records:
        assert "image" not in record
        assert "images" not in record
        assert "messages" not in record


def test_unknown_output_format_is_refused(tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "in.jsonl", [SHAREGPT])
    with pytest.raises(ValueError, match="output_format"):
        convert_instruction_file(source, tmp_path / "out.jsonl", output_format="sharegpt")  # type: ignore[arg-type]
    assert not (tmp_path / "out.jsonl").exists()


@pytest.mark.parametrize("output_format", ["messages", "llava"])
def test_json_array_input_and_output(tmp_path: Path, output_format: str) -> None:
    source = tmp_path / "in.json"
    source.write_text(json.dumps([SHAREGPT, ALPACA, OPENAI], indent=2))
    report = convert_instruction_file(source, tmp_path / "out.json", output_format=output_format)  # type: ignore[arg-type]
    array = read_output(tmp_path / "out.json")
    convert_instruction_file(source, tmp_path / "out.jsonl", output_format=output_format)  # type: ignore[arg-type]
    assert array == read_output(tmp_path / "out.jsonl")
    assert [r["id"] for r in array] == ["sg-1", "al-1", "oa-1"]
    assert report.written == 3
    assert partial_files(tmp_path) == []


def test_parquet_input(tmp_path: Path) -> None:
    rows = [{"id": f"p{i}", "conversations": SHAREGPT["conversations"]} for i in range(3)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "in.parquet")
    report = convert_instruction_file(tmp_path / "in.parquet", tmp_path / "out.jsonl")
    records = read_output(tmp_path / "out.jsonl")
    assert report.written == 3
    assert [r["id"] for r in records] == ["p0", "p1", "p2"]
    assert records[0]["messages"][-1] == msg("assistant", "6")


# ---------------------------------------------------------------------------------------------- ids


def plain(i: int) -> dict[str, Any]:
    return {"conversations": [{"from": "human", "value": f"q{i}"}, {"from": "gpt", "value": f"a{i}"}]}


@pytest.mark.parametrize("output_format", ["messages", "llava"])
def test_ids_default_to_the_global_row_index_across_chunks(tmp_path: Path, output_format: str) -> None:
    report, records = convert(tmp_path, [plain(i) for i in range(5)], chunk_size=2, output_format=output_format)
    assert [r["id"] for r in records] == ["0", "1", "2", "3", "4"]
    assert len({r["id"] for r in records}) == 5
    key = "messages" if output_format == "messages" else "conversations"
    texts = [r[key][0]["content"][0]["text"] if key == "messages" else r[key][0]["value"] for r in records]
    assert texts == [f"q{i}" for i in range(5)]
    assert (report.read, report.written) == (5, 5)


def test_ids_are_kept_and_stringified(tmp_path: Path) -> None:
    rows = [{**plain(0), "id": 17}, plain(1), {**plain(2), "id": "x"}, {**plain(3), "id": None}, plain(4)]
    _, records = convert(tmp_path, rows, chunk_size=2)
    assert [r["id"] for r in records] == ["17", "1", "x", "3", "4"]


def test_default_ids_count_skipped_rows(tmp_path: Path) -> None:
    rows = [plain(0), {"conversations": [{"from": "human", "value": "no answer"}]}, plain(2), "not a row", plain(4)]
    path = tmp_path / "in.jsonl"
    write_jsonl(path, rows)
    with path.open("a") as handle:
        handle.write("{broken\n")
        handle.write(json.dumps(plain(6)) + "\n")
    report = convert_instruction_file(path, tmp_path / "out.jsonl", skip_bad=True, chunk_size=2)
    records = read_output(tmp_path / "out.jsonl")
    assert [r["id"] for r in records] == ["0", "2", "4", "6"]
    assert (report.read, report.written, sum(report.skipped.values())) == (7, 4, 3)


# ---------------------------------------------------------------------------------------------- bad rows


def sharegpt(*turns: tuple[str, Any]) -> dict[str, Any]:
    return {"conversations": [{"from": speaker, "value": value} for speaker, value in turns]}


def openai(*messages: tuple[str, Any]) -> dict[str, Any]:
    return {"messages": [{"role": role, "content": content} for role, content in messages]}


BAD_ROWS = {
    "image placeholder": (sharegpt(("human", "<image>\nWhat is this?"), ("gpt", "A cat.")), "image placeholder"),
    "image placeholder in answer": (sharegpt(("human", "Hi"), ("gpt", "see <image>")), "image placeholder"),
    "qwen image marker": (openai(("user", "look <|image_pad|>"), ("assistant", "ok")), "image placeholder"),
    "alpaca placeholder in input": (
        {"instruction": "Describe", "input": "<image>", "output": "a dog"},
        "image placeholder",
    ),
    "image part": (
        openai(("user", [{"type": "image"}, {"type": "text", "text": "What?"}]), ("assistant", "A cat.")),
        "image part",
    ),
    "image_url part": (
        openai(("user", [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]), ("assistant", "A cat.")),
        "image part",
    ),
    "unsupported part": (openai(("user", [{"type": "audio"}]), ("assistant", "a")), "unsupported content part"),
    "image key": ({**plain(0), "image": "cat.png"}, "has an image"),
    "images key": ({**plain(0), "images": ["cat.png"]}, "has an image"),
    "ends with user": (sharegpt(("human", "q"), ("gpt", "a"), ("human", "and?")), "ends with a user turn"),
    "only user": (openai(("user", "q")), "ends with a user turn"),
    "not alternating": (sharegpt(("human", "q"), ("human", "q again"), ("gpt", "a")), "alternate"),
    "starts with assistant": (sharegpt(("gpt", "hello"), ("human", "q"), ("gpt", "a")), "alternate"),
    "system in the middle": (openai(("user", "q"), ("system", "s"), ("assistant", "a")), "alternate"),
    "empty turn": (sharegpt(("human", "q"), ("gpt", "   ")), "empty"),
    "empty alpaca output": ({"instruction": "q", "output": ""}, "empty"),
    "missing alpaca output": ({"instruction": "q"}, "content must be text"),
    "unknown speaker": (sharegpt(("human", "q"), ("robot", "a")), "unsupported speaker"),
    "unknown role": (openai(("user", "q"), ("tool", "a")), "role"),
    "turn without value": ({"conversations": [{"from": "human"}, {"from": "gpt", "value": "a"}]}, "'from' and 'value'"),
    "non-text value": (sharegpt(("human", 3), ("gpt", "a")), "content must be text"),
    "bad history": ({"instruction": "q", "output": "a", "history": [["only one"]]}, "history"),
    "no turns": ({"conversations": []}, "no turns"),
    "only system": (sharegpt(("system", "rules")), "no turns"),
    "unknown format": ({"prompt": "q", "completion": "a"}, "not a ShareGPT, Alpaca or messages row"),
    "list row": ([1, 2], "expected a record"),
    "string row": ("just text", "expected a record"),
    "number row": (42, "expected a record"),
    "null row": (None, "expected a record"),
}


@pytest.mark.parametrize("name", sorted(BAD_ROWS))
def test_bad_row_raises_naming_file_and_line(tmp_path: Path, name: str) -> None:
    row, reason = BAD_ROWS[name]
    source = write_jsonl(tmp_path / "in.jsonl", [plain(0), plain(1), row, plain(3)])
    output = tmp_path / "out.jsonl"
    with pytest.raises(RowError, match=reason) as info:
        convert_instruction_file(source, output, chunk_size=2)
    assert info.value.location == f"{source}:3"
    assert str(info.value).startswith(f"{source}:3: ")
    assert not output.exists()
    assert partial_files(tmp_path) == []


@pytest.mark.parametrize("name", sorted(BAD_ROWS))
def test_bad_row_is_skipped_and_listed_in_rejects(tmp_path: Path, name: str) -> None:
    row, reason = BAD_ROWS[name]
    rejects = tmp_path / "rejects.jsonl"
    report, records = convert(
        tmp_path, [plain(0), plain(1), row, plain(3)], skip_bad=True, rejects_path=rejects, chunk_size=2
    )
    assert (report.read, report.written, sum(report.skipped.values())) == (4, 3, 1)
    assert [r["id"] for r in records] == ["0", "1", "3"]
    assert report.rejects_path == str(rejects)
    listed = [json.loads(line) for line in rejects.read_text(encoding="utf-8").splitlines()]
    assert len(listed) == 1
    assert listed[0]["location"] == f"{tmp_path / 'in.jsonl'}:3"
    assert reason in listed[0]["reason"]
    assert partial_files(tmp_path) == []


def test_image_placeholder_in_system_prompt_is_a_bad_row() -> None:
    row = {"system": "You see <image> now.", **sharegpt(("human", "q"), ("gpt", "a"))}
    with pytest.raises(ValueError, match="image placeholder"):
        instruction_turns(row)


def test_invalid_json_line(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps(plain(0)) + "\n\n" + '{"conversations": [oops\n' + json.dumps(plain(3)) + "\n")
    output = tmp_path / "out.jsonl"
    with pytest.raises(RowError, match="invalid JSON") as info:
        convert_instruction_file(source, output)
    assert info.value.location == f"{source}:3"
    assert not output.exists()

    rejects = tmp_path / "rejects.jsonl"
    report = convert_instruction_file(source, output, skip_bad=True, rejects_path=rejects)
    assert (report.read, report.written, sum(report.skipped.values())) == (3, 2, 1)
    assert [r["id"] for r in read_output(output)] == ["0", "2"]
    (listed,) = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert listed["location"] == f"{source}:3"
    assert listed["reason"].startswith("invalid JSON")


def test_many_bad_rows_with_skip_bad(tmp_path: Path) -> None:
    bad = [row for row, _ in BAD_ROWS.values()]
    rows: list[Any] = []
    for i, row in enumerate(bad):
        rows += [plain(2 * i), row]
    rejects = tmp_path / "rejects.jsonl"
    report, records = convert(tmp_path, rows, output="out.json", skip_bad=True, rejects_path=rejects, chunk_size=3)
    assert report.read == 2 * len(bad)
    assert report.written == len(bad) == len(records)
    assert sum(report.skipped.values()) == len(bad)
    assert [r["id"] for r in records] == [str(2 * i) for i in range(len(bad))]
    listed = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert [entry["location"] for entry in listed] == [f"{tmp_path / 'in.jsonl'}:{2 * i + 2}" for i in range(len(bad))]
    assert all(entry["reason"] for entry in listed)
    assert "rejected rows are listed in" in report.summary()


def test_skip_bad_without_rejects_path_and_without_bad_rows(tmp_path: Path) -> None:
    report, records = convert(tmp_path, [plain(0), BAD_ROWS["empty turn"][0]], skip_bad=True)
    assert (report.read, report.written, sum(report.skipped.values())) == (2, 1, 1)
    assert report.rejects_path is None

    rejects = tmp_path / "rejects.jsonl"
    report, records = convert(tmp_path, [plain(0)], skip_bad=True, rejects_path=rejects)
    assert report.written == 1
    assert not report.skipped
    assert not rejects.exists()  # no rejects, no file


def test_failed_conversion_keeps_the_previous_output(tmp_path: Path) -> None:
    output = tmp_path / "out.json"
    output.write_text("[]\n")
    source = write_jsonl(tmp_path / "in.jsonl", [plain(i) for i in range(6)] + [BAD_ROWS["ends with user"][0]])
    with pytest.raises(RowError):
        convert_instruction_file(source, output, chunk_size=2, rejects_path=tmp_path / "rejects.jsonl")
    assert output.read_text() == "[]\n"
    assert not (tmp_path / "rejects.jsonl").exists()
    assert partial_files(tmp_path) == []


@pytest.mark.parametrize("text", ['{"conversations": []}', '[{"id": 1}, {"id": 2'])
def test_bad_json_array_input_leaves_no_output(tmp_path: Path, text: str) -> None:
    source = tmp_path / "in.json"
    source.write_text(text)
    output = tmp_path / "out.jsonl"
    with pytest.raises(RowError) as info:
        convert_instruction_file(source, output)
    assert str(source) in str(info.value)
    assert not output.exists()
    assert partial_files(tmp_path) == []


def test_json_array_locations_are_zero_based(tmp_path: Path) -> None:
    source = tmp_path / "in.json"
    source.write_text(json.dumps([plain(0), BAD_ROWS["unknown speaker"][0]]))
    with pytest.raises(RowError, match="unsupported speaker") as info:
        convert_instruction_file(source, tmp_path / "out.jsonl")
    assert info.value.location == f"{source}:1"


# ---------------------------------------------------------------------------------------------- datasets


DATASET_ROWS: dict[str, list[dict[str, Any]]] = {
    "sharegpt": [
        {"id": "a", "system": "Be brief.", "conversations": SHAREGPT["conversations"]},
        {"id": None, "system": None, "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]},
        {
            "id": "c",
            "system": "",
            "conversations": [{"from": "user", "value": "q2"}, {"from": "assistant", "value": "a"}],
        },
    ],
    "alpaca": [
        {"instruction": "Translate.", "input": "cat", "output": "chat", "system": "", "history": []},
        {"instruction": "Add.", "input": "", "output": "2", "system": "Math.", "history": [["1+0?", "1"]]},
        {"instruction": "Q", "input": None, "output": "A", "system": None, "history": None},
    ],
    "messages": [
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
        {
            "messages": [
                {"role": "system", "content": "s"},
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": "a"},
                {"role": "user", "content": "q2"},
                {"role": "assistant", "content": "a2"},
            ]
        },
    ],
    "text parts": [
        {"messages": [msg("user", "hi"), msg("assistant", "hello")]},
        {"messages": [msg("system", "s"), msg("user", "q"), msg("assistant", "a")]},
    ],
}


@pytest.mark.parametrize("output_format", ["messages", "llava"])
@pytest.mark.parametrize("kind", sorted(DATASET_ROWS))
def test_dataset_and_file_give_the_same_records(tmp_path: Path, kind: str, output_format: str) -> None:
    rows = DATASET_ROWS[kind]
    _, from_file = convert(tmp_path, rows, output_format=output_format, chunk_size=2)
    from_dataset = convert_instructions(datasets.Dataset.from_list(rows), output_format=output_format)  # type: ignore[arg-type]
    assert from_dataset.to_list() == from_file
    assert len(from_file) == len(rows)


def test_dataset_skip_bad_matches_file(tmp_path: Path) -> None:
    good = {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}
    bad = {"conversations": [{"from": "human", "value": "q"}, {"from": "human", "value": "again"}]}
    rows = [good, bad, good, bad, good]
    _, from_file = convert(tmp_path, rows, skip_bad=True)
    dataset = datasets.Dataset.from_list(rows)
    from_dataset = convert_instructions(dataset, skip_bad=True).to_list()
    assert from_dataset == from_file
    assert [r["id"] for r in from_dataset] == ["0", "2", "4"]
    with pytest.raises(RowError, match="alternate") as info:
        convert_instructions(dataset)
    assert info.value.location == "row 1"


def test_instructions_to_messages_batch() -> None:
    batch: dict[str, list[Any]] = {
        "id": [None, "keep"],
        "conversations": [
            [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}],
            [{"from": "human", "value": "q2"}, {"from": "gpt", "value": "a2"}],
        ],
    }
    out = instructions_to_messages(batch, [10, 11])
    assert out == {
        "id": ["10", "keep"],
        "messages": [[msg("user", "q"), msg("assistant", "a")], [msg("user", "q2"), msg("assistant", "a2")]],
        "images": [[], []],
    }
    assert instructions_to_messages(batch, id_column=None)["id"] == ["0", "1"]
    llava = instructions_to_messages(batch, [5, 6], output_format="llava")
    assert set(llava) == {"id", "conversations"}
    assert llava["conversations"][1] == [{"from": "human", "value": "q2"}, {"from": "gpt", "value": "a2"}]

    bad: dict[str, list[Any]] = {"conversations": [[{"from": "human", "value": "q"}]]}
    with pytest.raises(RowError, match="row 7"):
        instructions_to_messages(bad, [7])
    assert instructions_to_messages(bad, [7], skip_bad=True) == {"id": [], "messages": [], "images": []}
