"""The config file: every problem named by its key path, defaults made visible."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from wasmgate.config import ConfigError, explain, load_config, parse_config

VALID = {
    "processors": [{"name": "pii", "module": "pii-redact"}],
    "routes": [{"name": "chat", "upstream": "http://127.0.0.1:8000", "processors": ["pii"]}],
}


def problems(data: object) -> list[str]:
    with pytest.raises(ConfigError) as raised:
        parse_config(data)
    return raised.value.problems


def test_a_valid_config_gets_its_defaults():
    config = parse_config(VALID)
    pii = config.processor("pii")
    assert (pii.body.value, pii.failure_mode.value, pii.memory_limit) == ("stream", "fail_closed", 16 * 2**20)
    assert pii.timeouts.request_headers == 0.05
    assert config.routes[0].match.path_prefix == "/"


def test_durations_and_sizes_are_written_with_units():
    config = parse_config(
        {"processors": [{"name": "p", "module": "m", "timeouts": {"request_body": "1.5s"}, "memory_limit": "512KiB"}]}
    )
    assert config.processors[0].timeouts.request_body == 1.5
    assert config.processors[0].memory_limit == 512 * 1024


def test_an_unknown_key_is_named_with_its_path():
    assert problems({"processors": [{"name": "p", "module": "m", "timouts": {}}]}) == [
        "processors[0].timouts: unknown key"
    ]


def test_every_problem_is_reported_at_once():
    found = problems(
        {
            "listen": "nowhere",
            "processors": [{"name": "p", "module": "m", "timeouts": {"request_body": "soon"}, "memory_limit": "lots"}],
            "routes": [{"name": "r"}],
        }
    )
    paths = sorted(problem.split(":")[0] for problem in found)
    assert paths == [
        "listen",
        "processors[0].memory_limit",
        "processors[0].timeouts.request_body",
        "routes[0].upstream",
    ]
    assert any("write for example 50ms" in problem for problem in found)


def test_a_route_naming_a_missing_processor_is_reported():
    data = {**VALID, "routes": [{"name": "chat", "upstream": "http://u.test", "processors": ["pii", "nope"]}]}
    assert problems(data) == ["routes[0].processors[1]: no processor is named 'nope'"]


def test_duplicate_names_are_reported():
    data = {"processors": [{"name": "a", "module": "m"}, {"name": "a", "module": "n"}]}
    assert problems(data) == ["processors[1].name: 'a' is used twice"]


def test_processor_names_that_would_name_their_metrics_alike_are_reported():
    data = {"processors": [{"name": "token-count", "module": "m"}, {"name": "token.count", "module": "m"}]}
    assert problems(data) == [
        "processors[1].name: 'token.count' and 'token-count' would name their metrics alike"
        " (wasmgate_guest_token_count_...); rename one"
    ]


def test_the_fallback_mode_needs_a_fallback_response():
    assert problems({"processors": [{"name": "a", "module": "m", "failure_mode": "fallback"}]}) == [
        "processors[0]: failure_mode fallback needs a 'fallback' response"
    ]


def test_an_upstream_must_be_an_absolute_http_url():
    assert problems({"routes": [{"name": "r", "upstream": "ftp://x"}]}) == [
        "routes[0].upstream: 'ftp://x' is not an absolute http or https URL"
    ]


def test_bad_yaml_is_reported_with_its_line(tmp_path: Path):
    path = tmp_path / "gateway.yaml"
    path.write_text("listen: 127.0.0.1:8080\nroutes: [\n")
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    assert raised.value.problems[0].startswith("line 3")


def test_module_dirs_are_relative_to_the_config_file(tmp_path: Path):
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump({"module_dirs": ["mods"]}))
    assert load_config(path).module_dirs == [tmp_path / "mods"]


def test_explain_prints_every_default_in_the_units_a_user_writes():
    explained = yaml.safe_load(explain(parse_config(VALID)))
    pii = explained["processors"][0]
    assert pii["timeouts"] == {
        "init": "100ms",
        "request_headers": "50ms",
        "request_body": "200ms",
        "response_headers": "50ms",
        "response_body": "200ms",
        "done": "50ms",
    }
    assert pii["memory_limit"] == "16MiB"
    assert explained["sandbox"] == {"max_instances": 4096}
    assert parse_config(explained) == parse_config(VALID)  # what explain prints is a valid config


def test_sandbox_threads_from_an_older_config_is_ignored_with_a_warning(caplog):
    with caplog.at_level("WARNING", logger="wasmgate.config"):
        config = parse_config({**VALID, "sandbox": {"threads": 8}}, source="old.yaml")
    assert config.sandbox.max_instances == 4096
    assert "old.yaml: sandbox.threads is ignored" in caplog.text


def test_a_key_given_twice_is_an_error_naming_its_line(tmp_path: Path):
    path = tmp_path / "gateway.yaml"
    path.write_text("processors: []\nroutes: []\nprocessors: [{name: p, module: m}]\n")
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    twice = "the key 'processors' is given twice (while reading a mapping at line 1, column 1)"
    assert raised.value.problems == [f"line 3, column 1: not valid YAML: {twice}"]


def test_a_yaml_error_names_where_the_construct_left_open_began(tmp_path: Path):
    path = tmp_path / "gateway.yaml"
    path.write_text("listen: 127.0.0.1:8080\nroutes: [{name: r,\n  upstream: http://u\n")
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    assert "(while parsing a flow mapping at line 2, column 10)" in raised.value.problems[0]


def test_an_empty_config_file_is_an_error(tmp_path: Path):
    path = tmp_path / "gateway.yaml"
    path.write_text("# nothing yet\n")
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    assert raised.value.problems == ["(top level): the file is empty; a config has at least its routes"]


def test_a_tenant_holds_no_control_characters():
    assert problems({"routes": [{"name": "r", "upstream": "http://x", "tenant": "a\x00b"}]}) == [
        "routes[0].tenant: must hold no control characters (it namespaces processors' shared state)"
    ]
