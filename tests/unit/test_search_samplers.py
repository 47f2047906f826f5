"""Samplers: grid, random (seeded), Optuna's ask/tell; results ranking and plots."""

from __future__ import annotations

import pytest

from celery_agent.errors import ConfigError
from celery_agent.search.plot import best_so_far, save_png, sparkline, terminal_plot
from celery_agent.search.results import FAILED, SearchResult, TrialResult, table_rows
from celery_agent.search.samplers import GridSampler, RandomSampler, grid_points, make_sampler
from celery_agent.search.space import parse_space


def drain(sampler, limit=1000):
    out = []
    while len(out) < limit and (got := sampler.ask()) is not None:
        out.append(got)
    return out


def test_grid_crosses_choices_with_numeric_points_sized_for_the_trials():
    space = parse_space(["depth=choice:2,4", "lr=uniform:0:1"])
    points = grid_points(space, trials=6)
    assert len(points) == 6
    assert {(p["depth"], p["lr"]) for p in points} == {
        (d, x) for d in (2, 4) for x in (0.0, 0.5, 1.0)
    }
    got = drain(GridSampler(space, 6))
    assert [n for n, _ in got] == list(range(6))


def test_random_sampler_is_reproducible_with_a_seed():
    space = parse_space(["lr=loguniform:1e-4:1e-1", "depth=int:1:9"])
    a, b = drain(RandomSampler(space, seed=3), 5), drain(RandomSampler(space, seed=3), 5)
    assert a == b
    assert len({p["lr"] for _, p in a}) == 5


def test_optuna_sampler_proposes_within_the_space_and_learns_from_tell():
    pytest.importorskip("optuna")
    space = parse_space(["x=uniform:-3:3", "kind=choice:a,b"])
    sampler = make_sampler("optuna", space, "max", 10, seed=0)
    for _ in range(12):
        number, params = sampler.ask()
        assert -3 <= params["x"] <= 3 and params["kind"] in ("a", "b")
        sampler.tell(number, None if number == 0 else -((params["x"] - 1) ** 2))
    study = sampler.study
    assert len(study.trials) == 12 and study.trials[0].state.name == "FAIL"
    assert abs(study.best_params["x"] - 1) < 1.5


def test_unknown_sampler_names_the_known_ones():
    with pytest.raises(ConfigError, match="grid"):
        make_sampler("bayes", parse_space(["x=uniform:0:1"]), "max", 3)


def result_with(values, direction="max"):
    r = SearchResult("s1", "acc", direction, "random", {"c": "loguniform:0.01:10"})
    for i, v in enumerate(values):
        r.trials.append(TrialResult(i, {"c": 0.01 * 10**i}, f"run{i}", "done" if v is not None else FAILED, v))  # fmt: skip
    return r


def test_results_rank_by_direction_with_failed_trials_last():
    assert [t.number for t in result_with([0.5, None, 0.9, 0.7]).ranked] == [2, 3, 0, 1]
    assert [t.number for t in result_with([0.5, None, 0.9], "min").ranked] == [0, 2, 1]
    assert result_with([0.5, None, 0.9]).best_params == {"c": 1.0}
    assert result_with([None]).best is None
    header, rows = table_rows(result_with([0.5, 0.9]))
    assert header[:3] == ["rank", "trial", "acc"] and rows[0][:3] == ["1", "1", "0.9"]


def test_results_survive_a_json_round_trip(tmp_path):
    r = result_with([0.5, None, 0.9])
    path = r.save(tmp_path)
    import json

    back = SearchResult.from_json(json.loads(path.read_text()))
    assert back.best == r.best and len(back.trials) == 3


def test_png_is_written_and_terminal_plot_shows_the_trials(tmp_path):
    pytest.importorskip("matplotlib")
    r = result_with([0.5, None, 0.9, 0.7])
    path = save_png(r, tmp_path / "plot.png")
    assert path is not None and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert save_png(result_with([None]), tmp_path / "none.png") is None
    assert terminal_plot(r).strip()


def test_sparkline_and_running_best():
    assert sparkline([0, 1, 2]) == "▁▅█"
    assert best_so_far([1, 3, 2], "max") == [1, 3, 3]
    assert best_so_far([3, 1, 2], "min") == [3, 1, 1]
