"""`require`: a missing external need skips a test on a developer's machine and fails it under CI=true."""

from __future__ import annotations

import pytest

from tests.helpers import require, require_module


@pytest.mark.parametrize("value", ["true", "TRUE", "1", "yes"])
def test_under_ci_a_missing_need_fails_naming_it(monkeypatch, value):
    monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.fail.Exception, match="CI=true but PostgreSQL not reachable at x"):
        require(False, "PostgreSQL not reachable at x")
    with pytest.raises(pytest.fail.Exception, match="python package 'no_such_pkg_anima'"):
        require_module("no_such_pkg_anima")


@pytest.mark.parametrize("value", [None, "", "false", "0"])
def test_outside_ci_a_missing_need_skips(monkeypatch, value):
    if value is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.skip.Exception, match="^no C\\+\\+ compiler$"):
        require(None, "no C++ compiler")


def test_a_present_need_neither_skips_nor_fails(monkeypatch):
    monkeypatch.setenv("CI", "true")
    require(True, "unused")
    assert require_module("json").dumps([1]) == "[1]"
