"""`ganops` as a user runs it: the installed console script in a subprocess (system tier)."""

import pytest

from conftest import run_cli, write_params

pytestmark = pytest.mark.system


def test_help_lists_the_stages(tmp_path):
    out = run_cli("--help", cwd=tmp_path).stdout
    for command in ("prepare", "train"):
        assert command in out


def test_bad_params_exit_with_the_key_not_a_traceback(tmp_path):
    write_params(tmp_path / "params.yaml", {"train": {"batchsize": 3}})
    result = run_cli("prepare", cwd=tmp_path, check=False)
    assert result.returncode == 2
    assert "train.batchsize: unknown key" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "data").exists()


def test_prepare_then_train_from_the_command_line(tiny_project):
    run_cli("prepare", cwd=tiny_project)
    run_cli("train", "--params", "params.yaml", cwd=tiny_project)
    assert (tiny_project / "models" / "generator.safetensors").is_file()


def test_data_error_names_the_file(tmp_path):
    from PIL import Image

    for name in ("class_a", "class_b"):  # enough images for both splits: the bad file is what fails
        (tmp_path / "raw" / name).mkdir(parents=True)
        for index in range(6):
            Image.new("L", (8, 8), color=40 * index).save(tmp_path / "raw" / name / f"{index}.png")
    raw = tmp_path / "raw" / "class_a"
    (raw / "x.png").write_bytes(b"not a png")
    write_params(tmp_path / "params.yaml", {"data": {"source": "imagefolder", "path": str(tmp_path / "raw")}})
    result = run_cli("prepare", cwd=tmp_path, check=False)
    assert result.returncode == 2 and "x.png" in result.stderr and "Traceback" not in result.stderr
