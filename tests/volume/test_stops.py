"""volume.stops: each stop rule on hand-made steps; a rule set to None or 0 never stops."""

from __future__ import annotations

import pytest

from napari_sam.volume.stops import DEFAULT_RULES, Step, StopRules

OFF = StopRules(min_area=1, iou_threshold=float("-inf"), stability_threshold=0.0, overlap_threshold=0.0,
                max_growth=None, min_fraction=None, max_extent=None, max_distance=None)


def step(**kw) -> Step:
    base = {"z": 5, "distance": 1, "area": 100, "score": 0.8, "stability": 0.9, "overlap": 0.8, "largest": 100}
    return Step(**{**base, **kw})


@pytest.mark.parametrize(
    "rule, value, bad, good, name",
    [
        ("min_area", 10, {"area": 9}, {"area": 10}, "vanished"),
        ("iou_threshold", 0.5, {"score": 0.49}, {"score": 0.5}, "score"),
        ("stability_threshold", 0.7, {"stability": 0.69}, {"stability": 0.7}, "stability"),
        ("overlap_threshold", 0.3, {"overlap": 0.29}, {"overlap": 0.3}, "overlap"),
        ("max_growth", 1.5, {"area": 151}, {"area": 150}, "growth"),
        ("min_fraction", 0.25, {"area": 24}, {"area": 25}, "shrunk"),
        ("max_extent", 0.8, {"distance": 5, "largest": 100}, {"distance": 4, "largest": 100}, "extent"),  # r 5.6
        ("max_distance", 4, {"distance": 5}, {"distance": 4}, "distance"),
    ],
)
def test_each_rule_stops_past_its_threshold_only(rule, value, bad, good, name):
    rules = StopRules(**{**OFF.__dict__, rule: value})
    assert rules.reason(step(**bad)) == name
    assert rules.reason(step(**good)) == ""
    assert OFF.reason(step(**bad)) == ""  # the same step goes on with the rule off


def test_growth_is_against_the_largest_slice_so_far():
    s = step(area=120, largest=200)  # larger than the previous slice, smaller than the largest
    assert s.growth == pytest.approx(0.6)
    assert StopRules(**{**OFF.__dict__, "max_growth": 1.2}).reason(s) == ""
    assert StopRules(**{**OFF.__dict__, "min_fraction": 0.7}).reason(s) == "shrunk"


def test_first_stop_and_rule_order():
    steps = [step(z=1, area=100), step(z=2, area=90, overlap=0.1), step(z=3, area=0)]
    assert OFF.first_stop(steps) == 2  # an empty mask always stops (min_area >= 1)
    assert StopRules(**{**OFF.__dict__, "overlap_threshold": 0.3}).first_stop(steps) == 1
    assert DEFAULT_RULES.reason(step(area=0, score=0.0)) == "vanished"  # the first failing rule names it
