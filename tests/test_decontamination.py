"""Decontamination: word n-grams against the shipped test splits (real GSM8K and MATH text), the
embedding + judge check, the report kept per run on both stores, and export leaving contaminated
questions out, refusing test-split runs, and saying so in its card; through the command line."""

from __future__ import annotations

import json
from pathlib import Path

import tasks.judge
from bench.standins import build_encoder, mongomock_store
from flows.seed import seed
from tasks.benchmarks import load_rows, resolve_source
from tasks.config import DecontaminateConfig, SeedConfig
from tasks.decontamination import HeldOutQuestion, NgramIndex, check_run, contaminated_ids, ngram_matches, words
from tasks.store.models import Item, Result
from tasks.store.sqlite import SqliteStore
from tests.conftest import ROOT, run_flow_cli
from tests.support import ScriptedEngine

GSM8K_TEST = {row.question_id: row.question for row in load_rows(resolve_source("gsm8k", "test"))}
MATH_TEST = {row.question_id: row.question for row in load_rows(resolve_source("math", "test"))}
FRESH = ["A baker fills 14 trays with 9 rolls each and sells all but 17 rolls. How many rolls does he sell?",
         "Mia reads 23 pages on Monday and twice as many on Tuesday. How many pages has she read?",
         "Twelve friends split a bill of 312 dollars evenly. How much does each friend pay?"]


def test_normalisation_and_ngrams_catch_copies_not_near_misses() -> None:
    tests = [HeldOutQuestion("t", "t/0",
                             "Janet’s ducks lay 16 eggs per day. She eats three for breakfast every morning."),
             HeldOutQuestion("t", "t/1", "What is 2 + 2?")]
    index = NgramIndex(tests, n=8)
    assert words("Janet’s  DUCKS\nlay 16-eggs!") == ["janet’s", "ducks", "lay", "16-eggs!"]  # open-r1's, after NFKC
    copied = "Q: JANET’S ducks   lay 16 eggs per day. She eats three for breakfast, every morning."
    assert index.match(copied)[0].test_id == "t/0"  # case and spacing do not hide a copy
    seven = "Janet’s ducks lay 16 eggs per week, and she sells them."  # 7 words in common, then one differs
    assert index.match(seven) is None
    assert index.match("WHAT is 2 +  2?")[0].test_id == "t/1"  # a test question under 8 words: as a whole
    assert index.match("So what is 2 + 2 then?") is None
    found = ngram_matches(index, {"a": "A fresh question about apples.", "b": "Another fresh one."},
                          {"b": ["Recall: Janet's ducks lay 16 eggs per day. She eats three for breakfast."]})
    assert found == {"b": {"test_set": "t", "test_id": "t/0", "check": "8-gram in an answer",
                           "evidence": "ducks lay 16 eggs per day. she eats"}}


def test_real_test_questions_are_found_with_their_test_item() -> None:
    from tasks.decontamination import held_out_questions

    tests, missing = held_out_questions()
    assert {t.test_set for t in tests} == {"gsm8k/test", "math/test", "svamp/test"}
    assert set(missing) == {"gsm-hard", "asdiv", "mawps"}  # not shipped: said, not silently skipped
    index = NgramIndex(tests)
    questions = {"copy-gsm8k": GSM8K_TEST["gsm8k/test/5"].upper(), "copy-math": MATH_TEST["math/17"],
                 **{f"fresh-{n}": q for n, q in enumerate(FRESH)}}
    found = ngram_matches(index, questions)
    assert found["copy-gsm8k"]["test_id"] == "gsm8k/test/5" and found["copy-math"]["test_id"] == "math/17"
    assert set(found) == {"copy-gsm8k", "copy-math"}
    reworded = [json.loads(line) for line in (ROOT / "tests/data/reworded_gsm8k_test.jsonl").read_text().splitlines()]
    hits = ngram_matches(index, {row["id"]: row["question"] for row in reworded})
    assert not any(match["test_id"] == question_id for question_id, match in hits.items())  # rewording escapes 8-grams


def test_answers_are_checked_with_their_reasoning_traces() -> None:
    test_question = GSM8K_TEST["gsm8k/test/5"]
    traced = Item(question_id="q", question=FRESH[0], reference="7", status="done",
                  result=Result(response="#### 7", reasoning=f"I recall this one: {test_question}", correct=True))
    clean = Item(question_id="c", question=FRESH[1], reference="7", status="done",
                 result=Result(response="#### 7", reasoning="Adding the two numbers.", correct=True))
    found = check_run([traced, clean], DecontaminateConfig(run="t", answers=True, test_sets="gsm8k"))
    assert [match["question_id"] for match in found["matches"]] == ["q"]


def mixed_run(tmp_path: Path, run: str = "mixed") -> str:
    """A user's file (a train-like run) holding two GSM8K test questions, one MATH test question
    and three fresh ones, each answered correctly."""
    url = f"sqlite:///{tmp_path / 'fleetgen.db'}"
    questions = [GSM8K_TEST["gsm8k/test/3"], GSM8K_TEST["gsm8k/test/9"], MATH_TEST["math/17"], *FRESH]
    rows = [{"id": f"q{n}", "question": q, "answer": "7", "output": "Step by step.\n#### 7"}
            for n, q in enumerate(questions)]
    dataset = tmp_path / "mine.jsonl"
    dataset.write_text("".join(json.dumps(row) + "\n" for row in rows))
    seed(SeedConfig(store=url, run=run, dataset=str(dataset), response_field="output"))
    return url


def test_the_flow_keeps_per_question_matches_and_export_leaves_them_out(prefect_env, tmp_path: Path) -> None:
    mixed_run(tmp_path)
    checked = run_flow_cli("decontaminate.py", "--run", "mixed", cwd=tmp_path, env=prefect_env)
    assert checked.returncode == 0, checked.stderr
    assert "run 'mixed': 3 of 6 questions found in a test set (gsm8k/test 2, math/test 1)" in checked.stdout
    assert "not checked (not shipped, no --data-dir): gsm-hard, asdiv, mawps" in checked.stderr
    stored = SqliteStore(tmp_path / "fleetgen.db").contamination("mixed")
    assert [(m["question_id"], m["test_id"], m["check"]) for m in stored["matches"]] == [
        ("q0", "gsm8k/test/3", "8-gram"), ("q1", "gsm8k/test/9", "8-gram"), ("q2", "math/17", "8-gram")]
    out = tmp_path / "sft.jsonl"
    exported = run_flow_cli("export.py", "--run", "mixed", "--out", str(out), "--format", "sft", cwd=tmp_path,
                            env=prefect_env)
    assert exported.returncode == 0, exported.stderr
    assert "left out 3 questions found in a test set (3 answers)" in exported.stderr
    chats = [json.loads(line) for line in out.read_text().splitlines()]
    assert {chat["messages"][0]["content"] for chat in chats} == set(FRESH)
    card = (tmp_path / "sft.card.md").read_text()
    assert ("- decontamination: word 8-grams of questions against gsm8k/test (1,319), math/test (5,000), svamp/test "
            "(1,000); not checked: gsm-hard, asdiv, mawps") in card
    assert "- contaminated: 3 of 6 questions, 3 of their answers left out" in card
    kept = run_flow_cli("export.py", "--run", "mixed", "--out", str(tmp_path / "all.jsonl"), "--format", "sft",
                        "--keep-contaminated", cwd=tmp_path, env=prefect_env)
    assert kept.returncode == 0 and len((tmp_path / "all.jsonl").read_text().splitlines()) == 6


def test_export_decontaminates_by_itself_when_asked(prefect_env, tmp_path: Path) -> None:
    url = mixed_run(tmp_path, run="fresh")
    out = tmp_path / "dpo.jsonl"
    unchecked = run_flow_cli("export.py", "--run", "fresh", "--out", str(tmp_path / "x.jsonl"), "--format", "sft",
                             cwd=tmp_path, env=prefect_env)
    assert unchecked.returncode == 0 and "- decontamination: not checked" in (tmp_path / "x.card.md").read_text()
    result = run_flow_cli("export.py", "--run", "fresh", "--out", str(out), "--format", "sft", "--decontaminate",
                          cwd=tmp_path, env=prefect_env)
    assert result.returncode == 0, result.stderr
    assert len(out.read_text().splitlines()) == 3
    report = SqliteStore(Path(url.removeprefix("sqlite:///"))).contamination("fresh")
    assert contaminated_ids(report) == {"q0", "q1", "q2"}


def test_training_data_from_a_test_split_is_refused_unless_allowed(prefect_env, tmp_path: Path) -> None:
    seed(SeedConfig(store=f"sqlite:///{tmp_path / 'fleetgen.db'}", run="bench", dataset="gsm8k", split="test", limit=3))
    refused = run_flow_cli("export.py", "--run", "bench", "--out", str(tmp_path / "x.jsonl"), "--format", "sft",
                           cwd=tmp_path, env=prefect_env)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert ("Run 'bench' was seeded from the test split of gsm8k: exporting it as sft training data would train on "
            "the questions that benchmark is scored on") in refused.stderr
    assert not (tmp_path / "x.jsonl").exists()
    allowed = run_flow_cli("export.py", "--run", "bench", "--out", str(tmp_path / "x.jsonl"), "--format", "dpo",
                           "--allow-test-split", cwd=tmp_path, env=prefect_env)
    assert "seeded from the test split" not in allowed.stderr  # allowed: it gets past the check (nothing answered yet)
    rows = run_flow_cli("export.py", "--run", "bench", "--out", str(tmp_path / "r.jsonl"), cwd=tmp_path,
                        env=prefect_env)
    assert "seeded from the test split" not in rows.stderr  # rows are for analysis: never refused


def test_the_report_is_kept_on_mongodb_too() -> None:
    store = mongomock_store()
    store.ensure_run("m", {"split": "train"})
    found = check_run([], DecontaminateConfig(run="m"))
    store.set_contamination("m", found)
    assert store.contamination("m")["checked"] == 0 and store.contamination("m")["test_sets"][0]["name"] == "gsm8k/test"


def test_embedding_neighbours_are_confirmed_by_the_judge_both_ways(tmp_path: Path, monkeypatch) -> None:
    """A real (tiny, random) encoder ranks the candidates; a scripted judge says which is the same
    problem; 8-gram matches are not asked about again."""
    encoder = build_encoder(tmp_path / "encoder")
    against = tmp_path / "tests.jsonl"
    reworded = [json.loads(line) for line in (ROOT / "tests/data/reworded_gsm8k_test.jsonl").read_text().splitlines()]
    against.write_text("".join(json.dumps({"id": question_id, "question": GSM8K_TEST[question_id]}) + "\n"
                               for question_id in ("gsm8k/test/0", "gsm8k/test/1", "gsm8k/test/2")))
    asked: list[str] = []

    class Judge(ScriptedEngine):
        def reply(self, text: str) -> str:
            asked.append(text)
            same = "produce 16 eggs" in text and "lay 16 eggs" in text  # the reworded Janet question and its original
            return "Yes" if same and text.index("produce") < text.index("lay 16") else "No"  # yes in one order only

    monkeypatch.setattr(tasks.judge, "create_engine", lambda **kwargs: Judge({}))
    from tasks.store.models import Item

    items = [Item(question_id="r0", question=reworded[0]["question"], reference="18"),
             Item(question_id="r1", question=GSM8K_TEST["gsm8k/test/1"], reference="3"),  # an 8-gram copy
             Item(question_id="r2", question=FRESH[0], reference="109")]
    config = DecontaminateConfig(run="x", test_sets="none", against=str(against), embedding_model=str(encoder),
                                 top_k=3, model={"model": "judge-model"}, devices="cpu")
    found = check_run(items, config)
    matches = {m["question_id"]: m for m in found["matches"]}
    assert matches["r0"]["test_id"] == "gsm8k/test/0"
    assert matches["r0"]["check"] == "embedding, confirmed by judge-model"
    assert matches["r1"]["check"] == "8-gram" and "r2" not in matches
    assert len(asked) == 2 * 3 * 2  # r0 and r2, three candidates each, both orders
    assert found["method"]["embedding_model"] == str(encoder)
    assert found["test_sets"] == [{"name": "tests", "questions": 3}]


def test_bad_settings_read_as_one_paragraph(prefect_env, tmp_path: Path) -> None:
    result = run_flow_cli("decontaminate.py", "--run", "x", "--test-sets", "gsm9k", cwd=tmp_path, env=prefect_env)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert ("test_sets (--test-sets) = 'gsm9k': unknown benchmark(s) gsm9k: use all, none, or a comma list of"
            in result.stderr)
    missing = run_flow_cli("decontaminate.py", "--run", "x", "--against", "nowhere.jsonl", cwd=tmp_path,
                           env=prefect_env)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr, missing.stderr
