"""Specification of the experiment config: YAML + typed overrides, errors that name the key."""

from pathlib import Path

import pytest
import yaml

from pipeline.config.schema import (
    ConfigError,
    ExperimentConfig,
    config_from_dict,
    config_to_yaml,
    flatten_config,
    load_config,
)

REPO_ROOT = Path(__file__).resolve().parent.parent


def write_yaml(path: Path, content: dict) -> Path:
    path.write_text(yaml.safe_dump(content))
    return path


def test_no_file_and_no_overrides_gives_the_defaults():
    assert load_config(None, []) == ExperimentConfig()


def test_a_file_sets_only_the_keys_it_names(tmp_path):
    config_file = write_yaml(tmp_path / "run.yaml", {"optimization": {"lr": 0.05}})
    config = load_config(config_file, [])
    assert config.optimization.lr == 0.05
    assert config.optimization.momentum == ExperimentConfig().optimization.momentum


def test_override_values_are_parsed_as_yaml_and_typed():
    config = load_config(
        None,
        [
            "optimization.lr=0.02",
            "model.pool_scales=[1, 2, 3]",
            "optimization.grad_clip_norm=null",
            "scaling.use_gpu=true",
            "data.augmentation.crop_size=[48, 48]",
        ],
    )
    assert config.optimization.lr == 0.02
    assert config.model.pool_scales == (1, 2, 3)
    assert config.optimization.grad_clip_norm is None
    assert config.scaling.use_gpu is True
    assert config.data.augmentation.crop_size == (48, 48)


def test_an_int_is_accepted_where_a_float_is_declared():
    config = load_config(None, ["optimization.lr=1"])
    assert config.optimization.lr == 1.0 and isinstance(config.optimization.lr, float)


def test_scientific_notation_without_a_dot_is_a_float_in_files_and_overrides(tmp_path):
    config_file = tmp_path / "run.yaml"
    config_file.write_text("optimization:\n  weight_decay: 5e-4\n")
    config = load_config(config_file, ["optimization.lr=1e-2", "schedule.min_lr=1E-4"])
    assert config.optimization.weight_decay == 5e-4
    assert config.optimization.lr == 1e-2
    assert config.schedule.min_lr == 1e-4


def test_a_string_field_keeps_numeric_looking_text_as_text():
    config = load_config(None, ["tracking.experiment_name=2024"])
    assert config.tracking.experiment_name == "2024"


def test_overriding_one_entry_of_a_dict_keeps_the_others():
    config = load_config(None, ["scaling.resources_per_worker.GPU=1"])
    assert config.scaling.resources_per_worker == {"CPU": 0.5, "GPU": 1.0}


def test_later_overrides_win_over_the_file(tmp_path):
    config_file = write_yaml(tmp_path / "run.yaml", {"optimization": {"lr": 0.05}})
    assert load_config(config_file, ["optimization.lr=0.5"]).optimization.lr == 0.5


def test_unknown_override_key_is_named_with_the_valid_keys():
    with pytest.raises(ConfigError, match=r"optimization\.lrr") as error:
        load_config(None, ["optimization.lrr=0.1"])
    assert "momentum" in str(error.value)


def test_unknown_key_in_a_file_names_the_file_and_key(tmp_path):
    config_file = write_yaml(tmp_path / "bad.yaml", {"model": {"backbone_name": "resnet18"}})
    with pytest.raises(ConfigError, match=r"bad\.yaml.*model\.backbone_name.*pool_scales"):
        load_config(config_file, [])


def test_unknown_section_is_an_error():
    with pytest.raises(ConfigError, match=r"'optimisation'.*optimization"):
        load_config(None, ["optimisation.lr=0.1"])


def test_wrong_type_names_key_expected_type_and_value():
    with pytest.raises(ConfigError, match=r"'optimization\.lr' expects float, got 'fast'"):
        load_config(None, ["optimization.lr=fast"])


def test_a_bool_is_not_accepted_as_an_int():
    with pytest.raises(ConfigError, match=r"'scaling\.num_workers' expects int"):
        load_config(None, ["scaling.num_workers=true"])


def test_literal_choices_are_listed_when_the_value_is_not_one_of_them():
    with pytest.raises(ConfigError, match=r"mixed_precision.*'bf16', 'fp16'.*'fp32'"):
        load_config(None, ["scaling.mixed_precision=fp32"])


def test_a_fixed_length_tuple_rejects_the_wrong_length():
    with pytest.raises(ConfigError, match=r"data\.augmentation\.crop_size"):
        load_config(None, ["data.augmentation.crop_size=[1, 2, 3]"])


def test_an_override_without_equals_sign_is_an_error():
    with pytest.raises(ConfigError, match=r"section\.key=value"):
        load_config(None, ["optimization.lr"])


def test_a_missing_data_path_is_named():
    with pytest.raises(ConfigError, match=r"/no/such/shards"):
        load_config(None, ["data.path=/no/such/shards"])


def test_a_missing_data_path_is_allowed_when_path_checks_are_off():
    config = load_config(None, ["data.path=/no/such/shards"], check_paths=False)
    assert config.data.path == "/no/such/shards"


def test_global_batch_must_divide_by_the_number_of_workers():
    with pytest.raises(ConfigError, match=r"optimization\.batch_size=5.*scaling\.num_workers=2"):
        load_config(None, ["optimization.batch_size=5", "scaling.num_workers=2"])


def test_a_worker_range_makes_the_group_elastic():
    scaling = load_config(None, ["scaling.num_workers=[1, 2]"]).scaling
    assert scaling.num_workers == (1, 2)
    assert scaling.elastic
    assert (scaling.min_workers, scaling.max_workers) == (1, 2)


def test_a_single_worker_count_keeps_the_group_fixed():
    scaling = load_config(None, ["scaling.num_workers=4"]).scaling
    assert scaling.num_workers == 4
    assert not scaling.elastic
    assert (scaling.min_workers, scaling.max_workers) == (4, 4)


def test_a_worker_range_with_a_count_that_cannot_keep_the_global_batch_is_refused_in_one_line():
    with pytest.raises(ConfigError) as error:
        load_config(None, ["optimization.batch_size=8", "scaling.num_workers=[2, 4]"])
    message = str(error.value)
    assert "\n" not in message
    assert "optimization.batch_size=8" in message
    assert "on 3 workers of scaling.num_workers=[2, 4]" in message


def test_a_worker_range_whose_minimum_exceeds_its_maximum_is_refused():
    with pytest.raises(ConfigError, match=r"scaling\.num_workers=\[3, 2\].*min must not exceed"):
        load_config(None, ["scaling.num_workers=[3, 2]"])


def test_a_worker_range_loads_back_from_its_yaml_text():
    config = load_config(None, ["scaling.num_workers=[1, 2]"])
    assert config_from_dict(yaml.safe_load(config_to_yaml(config))) == config


def test_a_worker_range_of_more_than_two_counts_is_refused():
    with pytest.raises(ConfigError, match=r"'scaling\.num_workers' expects int or tuple"):
        load_config(None, ["scaling.num_workers=[1, 2, 3]"])


def test_exactly_one_training_length_must_be_set():
    with pytest.raises(ConfigError, match=r"exactly one of optimization\.epochs"):
        load_config(None, ["optimization.iterations=100"])
    with pytest.raises(ConfigError, match=r"exactly one of optimization\.epochs"):
        load_config(None, ["optimization.epochs=null"])


def test_training_length_in_iterations_is_accepted():
    config = load_config(None, ["optimization.epochs=null", "optimization.iterations=100"])
    assert config.optimization.iterations == 100


def test_yaml_text_loads_back_to_an_equal_config():
    config = load_config(None, ["model.pool_scales=[1, 6]", "scaling.channels_last=false"])
    assert config_from_dict(yaml.safe_load(config_to_yaml(config))) == config


def test_flattened_config_has_dotted_string_entries():
    flat = flatten_config(load_config(None, ["model.pool_scales=[1, 2]"]))
    assert flat["model.pool_scales"] == "[1, 2]"
    assert flat["optimization.lr"] == "0.01"
    assert flat["data.augmentation.flip_prob"] == "0.5"
    assert all(isinstance(value, str) for value in flat.values())


def test_the_embedded_default_config_loads():
    config = load_config(REPO_ROOT / "configs" / "synthetic.yaml", [])
    assert config.data.path is None
    assert config.model.backbone == "resnet18"
    assert config.scaling.num_workers == 2


def test_node_metrics_are_on_every_ten_seconds_unless_set_and_the_interval_must_be_positive():
    tracking = load_config(None, []).tracking
    assert tracking.node_metrics and tracking.node_metrics_interval_s == 10.0
    with pytest.raises(ConfigError, match=r"tracking\.node_metrics_interval_s must be positive"):
        load_config(None, ["tracking.node_metrics_interval_s=0"])
