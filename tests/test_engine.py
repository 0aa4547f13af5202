"""The one flow of `sampleiqa score` (clients/engine.py) with a stand-in engine, and the job
made from the real parser's flags (clients/job.py): what each engine may rely on."""

from __future__ import annotations

import argparse

import pytest

from sampleiqa.clients import engine as flow
from sampleiqa.clients.commands import add_score_arguments
from sampleiqa.clients.engine import Plan
from sampleiqa.clients.job import JobError, job_from_args
from sampleiqa.clients.summary import Summary


def job(*argv: str):
    p = argparse.ArgumentParser()
    add_score_arguments(p)
    return job_from_args(p.parse_args(list(argv)))


class Fake:
    """An engine whose output holds `rows`, whose inputs hold `files` of which `todo` are left."""

    def __init__(self, *argv: str, rows=False, files=3, todo=3, other=False, summary=None):
        self.job, self.out = job(*argv), "OUT"
        self.rows, self.files, self.todo, self.other = rows, files, todo, other
        self.summary = summary or Summary(total=files, scored=todo)
        self.calls: list[str] = []

    def claim(self):
        self.calls.append("claim")

    def release(self):
        self.calls.append("release")

    def found_any(self):
        self.calls.append("found_any")
        return self.files > 0

    def drop(self):
        self.calls.append("drop")
        self.rows = False

    def has_rows(self):
        return self.rows

    def other_run(self):
        return self.other

    def plan(self):
        self.calls.append("plan")
        return Plan(files=self.files, listing=False, todo=self.todo if self.rows else self.files)

    def score(self, urls):
        self.calls.append(f"score {urls}")
        return self.summary


@pytest.fixture(autouse=True)
def no_server(monkeypatch):
    monkeypatch.setattr(flow, "server_urls", lambda urls, *a: (None, list(urls)))


def test_a_new_output_is_scored_and_the_summary_decides_the_code(capsys):
    e = Fake("a.jpg", "--url", "h:1")
    assert flow.run(e) == 0
    assert e.calls == ["claim", "plan", "score ['h:1']", "release"]
    assert "3 files: 3 scored ok" in capsys.readouterr().err
    assert flow.run(Fake("a.jpg", "--url", "h:1", summary=Summary(total=3, aborted="gone"))) == 1


def test_overwrite_of_empty_inputs_drops_nothing(capsys):
    e = Fake("a.jpg", "--overwrite", rows=True, files=0)
    assert flow.run(e) == 2 and "drop" not in e.calls and e.calls[-1] == "release"
    assert "no image files found; nothing was dropped" in capsys.readouterr().err


def test_rows_without_resume_are_the_same_finished_run_or_refused(capsys):
    assert flow.run(Fake("a.jpg", rows=True, todo=0)) == 0
    assert "all 3 files already have a row in OUT; nothing to do" in capsys.readouterr().err
    for e in (Fake("a.jpg", rows=True, todo=1), Fake("a.jpg", rows=True, todo=0, other=True)):
        assert flow.run(e) == 2 and not any(c.startswith("score") for c in e.calls)
        assert "OUT already has rows: pass --resume" in capsys.readouterr().err
    assert flow.run(Fake("a.jpg", "--resume", "--url", "h:1", rows=True, todo=1)) == 0


def test_ctrl_c_before_the_scoring_stops_with_exit_1(capsys):
    e = Fake("a.jpg")

    def interrupted():
        raise KeyboardInterrupt

    e.plan = interrupted
    assert flow.run(e) == 1 and e.calls == ["claim", "release"]
    assert "STOPPED: interrupted" in capsys.readouterr().err


def test_the_job_takes_each_engines_defaults_and_refuses_nonsense():
    local, ray = job(), job("--engine", "ray")
    assert (local.out, local.format, ray.out, ray.format) == ("scores.csv", "csv", "scores", "parquet")
    assert job("--out", "x.jsonl").format == "jsonl" and job("--engine", "ray", "--out", "s.csv/").format == "csv"
    assert local.urls == () and job("--url", "a:1", "--url", "b:2").urls == ("a:1", "b:2")
    assert job("--tls").tls is not None and local.tls is None
    for argv, said in (
        (["--format", "parquet"], "needs --engine ray"),
        (["--concurrency", "0"], "--concurrency must be at least 1"),
        (["--timeout", "nan"], "--timeout cannot be negative"),
    ):
        with pytest.raises(JobError, match=said):
            job(*argv)
