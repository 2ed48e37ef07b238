"""Profiles: YAML plus environment overrides, validated before any work starts."""

from pathlib import Path

import pytest
from loopwise import usecase
from loopwise.config import ConfigError, GateSettings, load_settings


def test_dev_is_the_default_and_everything_lives_under_the_data_root(tmp_path: Path) -> None:
    settings = load_settings(environ={"LOOPWISE_DATA_DIR": str(tmp_path / "root")})
    assert settings.profile == "dev"
    assert settings.spark.remote is None
    for path in (settings.paths.landing, settings.paths.lake, settings.paths.dagster_home,
                 settings.paths.feast, settings.paths.mlflow, settings.paths.events):
        assert path.is_relative_to(tmp_path / "root")
    assert settings.lake_uri == str(tmp_path / "root" / "lake")


def test_environment_overrides_any_key() -> None:
    settings = load_settings("prod", environ={
        "SPARK_REMOTE": "sc://spark.example:15002",
        "LOOPWISE__VALIDATION__MAX_BAD_ROW_FRACTION": "0.2",
        "LOOPWISE__LAKE__URI": "s3://bucket/lake",
    })
    assert settings.spark.remote == "sc://spark.example:15002"
    assert settings.validation.max_bad_row_fraction == 0.2
    assert settings.lake_uri == "s3://bucket/lake"


def test_a_bad_value_names_its_key_and_file(tmp_path: Path) -> None:
    config = tmp_path / "mine.yaml"
    config.write_text("validation:\n  max_bad_row_fraction: 1.5\n")
    with pytest.raises(ConfigError) as err:
        load_settings(environ={"LOOPWISE_CONFIG": str(config)})
    assert "validation.max_bad_row_fraction" in str(err.value)
    assert str(config) in str(err.value)


def test_a_bad_environment_value_names_the_variable() -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(environ={"LOOPWISE__DEMO__ROWS_PER_DAY": "-3"})
    assert "demo.rows_per_day" in str(err.value)
    assert "LOOPWISE__DEMO__ROWS_PER_DAY" in str(err.value)
    assert "greater than 0" in str(err.value)  # the value's problem, not an unknown key


def test_an_unknown_key_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "typo.yaml"
    config.write_text("sprak:\n  remote: sc://x\n")
    with pytest.raises(ConfigError, match="sprak"):
        load_settings(environ={"LOOPWISE_CONFIG": str(config)})


def test_an_unknown_profile_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="dev, test, prod"):
        load_settings("staging", environ={})


def test_a_models_gate_overrides_only_its_own_keys() -> None:
    settings = load_settings(environ={"LOOPWISE__REGISTRY__MODELS": "{order-refund-risk: {floors: {auc: 0.6}}}"})
    defaults = GateSettings(floors={"auc": 0.65}, ceilings={"brier": 0.25}, tolerance=0.01)
    assert settings.registry.gate("order-refund-risk") == GateSettings(floors={"auc": 0.6}, ceilings={"brier": 0.25},
                                                                       tolerance=0.01)
    assert settings.registry.gate("ticket-escalation") == defaults  # another model keeps the registry-wide gate
    assert load_settings(environ={}).registry.gate("order-refund-risk") == defaults


def test_the_use_case_is_the_supportdesk_package_by_default() -> None:
    settings = load_settings(environ={})
    assert settings.use_case == "supportdesk"
    assert usecase.load(settings.use_case).name == "supportdesk"


def test_an_unknown_use_case_names_the_setting_that_chose_it() -> None:
    settings = load_settings(environ={"LOOPWISE__USE_CASE": "no_such_usecase_package"})
    with pytest.raises(usecase.UseCaseError) as err:
        usecase.load(settings.use_case)
    assert "'no_such_usecase_package' cannot be imported" in str(err.value)
    assert "`use_case`" in str(err.value) and "LOOPWISE__USE_CASE" in str(err.value)
    with pytest.raises(usecase.UseCaseError, match="package 'json' defines no USE_CASE"):
        usecase.load("json")  # importable, but declares nothing


def test_a_bad_nested_override_names_its_variable() -> None:
    with pytest.raises(ConfigError) as error:
        load_settings(environ={"LOOPWISE__REGISTRY__MODELS": "{order-refund-risk: {tolerance: -1}}"})
    assert "registry.models.order-refund-risk.tolerance" in str(error.value)
    assert "environment variable LOOPWISE__REGISTRY__MODELS" in str(error.value)


def test_the_feast_yaml_files_name_only_variables_loopwise_reads() -> None:
    """`feature_store*.yaml` (for the feast CLI) may use the data root, a secret the profile names, or an override."""
    import re

    repo = Path(__file__).resolve().parent.parent / "feature_repo"
    prod = load_settings("prod")
    secrets = {f"LOOPWISE_SECRET_{name.upper()}" for name in prod.secret_names()}
    for path in repo.glob("feature_store*.yaml"):
        for variable in re.findall(r"\$\{(\w+)\}", path.read_text()):
            if variable == "LOOPWISE_DATA_DIR" or variable in secrets:
                continue
            assert variable.startswith("LOOPWISE__"), (path.name, variable)
            section, key = variable.removeprefix("LOOPWISE__").lower().split("__")
            assert key in type(getattr(prod, section)).model_fields, (path.name, variable)
