from pathlib import Path

import pytest

from ganops.config import ConfigError, Params, load_params, validate_params

REPO = Path(__file__).resolve().parents[1]


def test_repository_params_are_valid_and_complete():
    params = load_params(REPO / "params.yaml")
    assert isinstance(params, Params)
    # params.yaml is the single source of knobs: every field the code knows is written out there.
    import yaml

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    for section in ("data", "model", "train"):
        assert set(raw[section]) == set(type(getattr(params, section)).model_fields), section


def test_train_keys_are_recipe_or_run_knob_and_export_reads_the_recipe():
    """Each train key is either the recipe (what is computed, recorded in the exported model) or a run
    knob (how the run goes), never both; dvc.yaml's export stage lists exactly the recipe."""
    import yaml

    from ganops.config import TRAIN_RECIPE, TRAIN_RUN_KNOBS, TrainParams

    assert set(TRAIN_RUN_KNOBS) <= set(TrainParams.model_fields) and set(TRAIN_RECIPE).isdisjoint(TRAIN_RUN_KNOBS)
    assert set(TRAIN_RECIPE) | set(TRAIN_RUN_KNOBS) == set(TrainParams.model_fields)
    assert "steps" in TRAIN_RECIPE and "log_every" in TRAIN_RUN_KNOBS
    export = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["export"]["params"]
    listed = [key if isinstance(key, str) else next(iter(key)) for key in export]
    assert [key for key in listed if key.startswith("train")] == [f"train.{key}" for key in TRAIN_RECIPE]


def test_unknown_key_names_its_path():
    with pytest.raises(ConfigError) as error:
        validate_params({"train": {"stpes": 10}}, "params.yaml")
    message = str(error.value)
    assert "train.stpes" in message
    assert "unknown key" in message
    assert "params.yaml" in message


def test_unknown_section_is_rejected():
    with pytest.raises(ConfigError, match="trian: unknown key"):
        validate_params({"trian": {}})


def test_wrong_type_names_key_and_reason():
    with pytest.raises(ConfigError) as error:
        validate_params({"train": {"batch_size": "sixty-four"}})
    assert "train.batch_size" in str(error.value)
    assert "integer" in str(error.value)


@pytest.mark.parametrize(
    ("overrides", "path", "reason"),
    [
        ({"data": {"resolution": 48}}, "data.resolution", "power of two"),
        ({"data": {"resolution": 256}}, "data.resolution", "power of two"),
        ({"data": {"channels": 2}}, "data.channels", "1 or 3"),
        ({"data": {"test_fraction": 1.5}}, "data.test_fraction", "less than 1"),
        ({"train": {"loss": "lsgan"}}, "train.loss", "minimax"),
        ({"train": {"lr_g": 0}}, "train.lr_g", "greater than 0"),
        ({"train": {"ema_decay": 1.0}}, "train.ema_decay", "less than 1"),
        ({"train": {"steps": 0}}, "train.steps", "greater than or equal to 1"),
        ({"model": {"latent_dim": -3}}, "model.latent_dim", "greater than or equal to 1"),
    ],
)
def test_out_of_range_values(overrides, path, reason):
    with pytest.raises(ConfigError) as error:
        validate_params(overrides)
    assert path in str(error.value)
    assert reason in str(error.value)


def test_sources_with_files_need_a_path():
    with pytest.raises(ConfigError, match="data.path is required when data.source is 'imagefolder'"):
        validate_params({"data": {"source": "imagefolder"}})


def test_every_error_is_reported_at_once():
    with pytest.raises(ConfigError) as error:
        validate_params({"data": {"resolution": 7}, "train": {"batch_size": 0, "typo": 1}})
    message = str(error.value)
    assert "data.resolution" in message and "train.batch_size" in message and "train.typo" in message


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "params.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(bad)
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_params(bad)


def test_empty_file_gives_defaults(tmp_path):
    empty = tmp_path / "params.yaml"
    empty.write_text("")
    assert load_params(empty) == Params()


def test_recipes_are_valid_params():
    recipes = sorted((REPO / "recipes").glob("*.yaml"))
    assert recipes
    for recipe in recipes:
        params = load_params(recipe)  # each a complete, valid params set
        if recipe.stem == "cifar10":  # the literature's recipes are test_literature_protocol.py's
            assert params.data.source == "cifar10" and params.train.loss == "hinge" and params.model.spectral_norm
