"""benchmarks/runs.py: a run is built once, reused on rerun, and never built twice at once by
benchmark processes that reach it side by side."""

import threading

from benchmarks.runs import marker, run_once

INPUTS = {"seed": 0, "steps": 10}


def test_a_finished_run_is_reused_and_changed_inputs_rebuild_it(tmp_path):
    out, builds = tmp_path / "model.pt", []

    def build(resume):
        builds.append(resume)
        out.write_text("weights")

    run_once(out, INPUTS, "cmd", build)
    run_once(out, INPUTS, "cmd", build)
    assert builds == [False] and marker(out).is_file()
    run_once(out, {**INPUTS, "steps": 20}, "cmd", build)
    assert builds == [False, False]


def test_a_run_reached_by_two_processes_at_once_is_built_once(tmp_path, capsys):
    """The second caller waits on the lock and reuses the first one's output (two threads
    stand in for two processes: flock locks on separate opens of a file exclude each other)."""
    out, builds = tmp_path / "model.pt", []
    started, release = threading.Event(), threading.Event()

    def slow_build(resume):
        builds.append("first")
        started.set()
        assert release.wait(10)
        out.write_text("weights")

    def second_build(resume):
        builds.append("second")
        out.write_text("other weights")

    first = threading.Thread(target=run_once, args=(out, INPUTS, "cmd", slow_build))
    first.start()
    assert started.wait(10)
    minutes = []
    second = threading.Thread(target=lambda: minutes.append(
        run_once(out, INPUTS, "cmd", second_build)))
    second.start()
    said = ""
    for _ in range(1000):  # until the second caller says it waits for the first (<= 10 s)
        said += capsys.readouterr().err
        if "waiting for another process" in said or not second.is_alive():
            break
        second.join(0.01)
    assert "waiting for another process that is building" in said and second.is_alive()
    release.set()
    first.join(10)
    second.join(10)
    assert builds == ["first"] and out.read_text() == "weights" and len(minutes) == 1


def test_an_interrupted_run_resumes(tmp_path):
    out = tmp_path / "model.pt"
    marker(out, "started").write_text('{"inputs": {"seed": 0, "steps": 10}}')
    seen = []
    run_once(out, INPUTS, "cmd", lambda resume: (seen.append(resume), out.write_text("w")))
    assert seen == [True] and not marker(out, "started").exists()
