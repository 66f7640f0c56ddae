"""The suite's own rules (docs/testing.md): a test that needs the FID weights skips on a developer's
machine that lacks them, saying how to install them, and fails under CI, where it must never pass by
skipping. Unit tier: the environment is monkeypatched, nothing is installed or removed."""

from __future__ import annotations

import shutil

import pytest

from conftest import in_ci, need_fid_weights
from ganops.metrics.fid_weights import WHEEL_FILE
from ganops.metrics.inception import default_weights_path


@pytest.mark.parametrize(("value", "ci"), [(None, False), ("", False), ("0", False), ("false", False), ("No", False),
                                           ("true", True), ("1", True), ("True", True), ("yes", True)])
def test_ci_is_what_ci_systems_set(value, ci):
    assert in_ci({} if value is None else {"CI": value}) is ci


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    """A ganops cache holding nothing: no FID weights, no wheel."""
    monkeypatch.setenv("GANOPS_CACHE", str(tmp_path / "cache"))
    assert not default_weights_path().exists()
    return tmp_path / "cache"


def test_missing_fid_weights_skip_locally_naming_them_and_setup_sh(empty_cache, monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"FID Inception weights not installed \(.*cache.*\): run \./setup\.sh"):
        need_fid_weights()


@pytest.mark.parametrize("value", ["true", "1"])
def test_missing_fid_weights_fail_under_ci(empty_cache, monkeypatch, value):
    monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.fail.Exception, match="FID Inception weights not installed.*CI is set, so this test fails"):
        need_fid_weights()
    with pytest.raises(pytest.fail.Exception, match=WHEEL_FILE):
        need_fid_weights(wheel=True)


def test_installed_fid_weights_are_returned_and_the_wheel_is_checked_when_asked(empty_cache, monkeypatch):
    monkeypatch.setenv("CI", "true")
    empty_cache.mkdir()
    default_weights_path().write_bytes(b"stand-in: need_fid_weights checks the file is there, load_network checks it")
    assert need_fid_weights() == default_weights_path()
    with pytest.raises(pytest.fail.Exception, match=f"{WHEEL_FILE}.*CI is set"):  # the wheel alone is missing
        need_fid_weights(wheel=True)
    shutil.copy(default_weights_path(), empty_cache / WHEEL_FILE)
    assert need_fid_weights(wheel=True) == default_weights_path()
