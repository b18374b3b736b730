"""Config: layers apply in order, unknown keys and broken relations are clear errors, secrets redacted."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from streaming.config import (
    Config,
    ConfigError,
    env_name,
    key_docs,
    reference_markdown,
    sections,
)


def test_defaults_are_valid() -> None:
    cfg = Config.load(env={})
    assert cfg.join.window_ms > 0 and cfg.kafka.poll_timeout_ms < cfg.kafka.session_timeout_ms
    assert cfg.events.feature_encoding == "float32"
    assert (
        Config.load(env={"ENCORE_EVENTS__FEATURE_ENCODING": "json"}).events.feature_encoding
        == "json"
    )


def test_layers_file_then_env_then_flags(tmp_path: Path) -> None:
    f = tmp_path / "encore.toml"
    f.write_text(
        '[join]\nwindow_ms = 1000\naggregate = "sum"\n[policy]\nname = "uniform"\n'
        "[policy.params]\nalpha = 2.0\n"
    )
    cfg = Config.load(
        f,
        env={"ENCORE_JOIN__WINDOW_MS": "2000", "ENCORE_KAFKA__BOOTSTRAP_SERVERS": "h:1"},
        overrides=["join.allowed_lateness_ms=7"],
    )
    assert (
        cfg.join.window_ms == 2000
        and cfg.join.aggregate == "sum"
        and cfg.join.allowed_lateness_ms == 7
    )
    assert cfg.policy.name == "uniform" and cfg.policy.params == {"alpha": 2.0}
    assert cfg.kafka.bootstrap_servers == "h:1"
    assert env_name("join", "window_ms") == "ENCORE_JOIN__WINDOW_MS"


@pytest.mark.parametrize(
    ("text", "env", "overrides", "message"),
    [
        ("[nope]\na = 1\n", {}, [], "unknown config section"),
        ("[join]\nwindow = 1\n", {}, [], "unknown key(s) ['window'] in [join]"),
        ("[join]\nwindow_ms = '10'\n", {}, [], "c.toml) must be an integer"),
        ("", {"ENCORE_JOIN__WINDOW_MS": "ten"}, [], "ENCORE_JOIN__WINDOW_MS"),
        ("", {}, ["join.window_ms=0"], "JoinConfig.window_ms must be in"),
        ("", {}, ["join.aggregate=mean"], "must be one of"),
        ("", {}, ["events.feature_encoding=float64"], "events.feature_encoding (from --set"),
        ("", {}, ["kafka.poll_timeout_ms=20000"], "must be below kafka.session_timeout_ms"),
        ("", {}, ['kafka.client_options={"group_id": "x"}'], "client_options has keys"),
        ("", {}, ["kafka.security_protocol=SASL_SSL"], "sasl_mechanism is required"),
        ("", {}, ["windowms=1"], "--set takes section.key=value"),
        ("[join\n", {}, [], "cannot read config file"),
    ],
)
def test_invalid_config_is_a_clear_error(
    tmp_path: Path, text: str, env: dict[str, str], overrides: list[str], message: str
) -> None:
    f = tmp_path / "c.toml"
    f.write_text(text)
    with pytest.raises(ConfigError) as info:
        Config.load(f, env=env, overrides=overrides)
    assert message in str(info.value)


def test_secrets_are_redacted() -> None:
    cfg = Config.load(
        env={},
        overrides=[
            "kafka.security_protocol=SASL_SSL",
            "kafka.sasl_mechanism=PLAIN",
            "kafka.sasl_plain_password=hunter2",
        ],
    )
    assert "hunter2" not in cfg.to_json()
    assert cfg.redacted()["kafka"]["sasl_plain_password"] == "***"
    assert cfg.kafka.security()["sasl_plain_password"] == "hunter2"


def test_topics_for_a_run_rename_every_topic_and_keep_the_counts() -> None:
    t = Config.load(env={}).topics
    mine = t.for_run("r1")
    assert mine.impressions == f"{t.impressions}.r1" and mine.handoff == f"{t.handoff}.r1"
    assert mine.partitions == t.partitions
    names = [
        getattr(mine, f.name)
        for f in dataclasses.fields(mine)
        if isinstance(getattr(mine, f.name), str)
    ]
    assert all(n.endswith(".r1") for n in names) and len(set(names)) == len(names)


def test_every_key_has_a_description_and_the_reference_covers_it() -> None:
    docs = key_docs()
    keys = {(k.section, k.key) for k in docs}
    assert all(k.doc and k.type and k.env == env_name(k.section, k.key) for k in docs)
    for section, section_cls in sections().items():
        assert {(section, f.name) for f in dataclasses.fields(section_cls)} <= keys
    text = reference_markdown()
    assert all(f"| `{k.key}` |" in text and f"`{k.env}`" in text for k in docs)


def test_docs_configuration_md_is_the_generated_reference() -> None:
    path = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
    assert path.read_text() == reference_markdown(), (
        "docs/configuration.md is stale: run `encore config reference > docs/configuration.md`"
    )


def test_cli_prints_the_reference(capsys: pytest.CaptureFixture[str]) -> None:
    from streaming.cli import main

    assert main(["config", "reference"]) == 0
    assert capsys.readouterr().out == reference_markdown()


def test_errors_say_where_a_value_came_from(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text("[rerank]\nport = 70000\n[join]\nwindow_ms = '10'\n")
    with pytest.raises(ConfigError, match=r"join\.window_ms \(from .*c\.toml\) must be an integer"):
        Config.load(f, env={})
    f.write_text("[rerank]\nport = 70000\n")
    with pytest.raises(ConfigError, match=r"rerank\.port must be in .* \(set: rerank\.port by "):
        Config.load(f, env={})
    with pytest.raises(ConfigError, match=r"\(set: join\.window by ENCORE_JOIN__WINDOW\)"):
        Config.load(env={"ENCORE_JOIN__WINDOW": "1"})


def test_the_worker_trains_every_registered_reward_model() -> None:
    import rewards
    from streaming.config import REWARD_MODELS
    from streaming.core import make_engine

    assert set(REWARD_MODELS) == set(rewards.MODELS)
    cfg = Config.load(env={}, overrides=["reward.model=session", "reward.history_length=4"])
    eng = make_engine(cfg)
    assert eng.reward_model.spec.name == "session"
    assert (eng.history_length, eng.history_dim) == (4, rewards.session.HISTORY_DIM)
    assert (make_engine(Config.load(env={})).history_length) == 0  # survival reads none
    d = cfg.events.d_track
    wide = Config.load(
        env={},
        overrides=["reward.model=session", f'reward.model_params={{"history_dim": {9 + d}}}'],
    )
    assert make_engine(wide).history_dim == 9 + d  # each entry: the outcome, then the track
    odd = Config.load(
        env={}, overrides=["reward.model=session", 'reward.model_params={"history_dim": 5}']
    )
    with pytest.raises(ValueError, match="history_dim is 5"):
        make_engine(odd)
    with pytest.raises(ConfigError, match="history_length must be positive"):
        Config.load(env={}, overrides=["reward.history_length=0"])


@pytest.mark.parametrize(
    ("text", "env", "overrides", "message"),
    [
        ("[join]\nwindw_ms = 1\n", {}, [], "in [join] (did you mean join.window_ms?)"),
        ("", {"ENCORE_JOIN__WINDW_MS": "1"}, [], "(did you mean ENCORE_JOIN__WINDOW_MS?)"),
        ("", {}, ["join.windw_ms=1"], "in [join] (did you mean join.window_ms?) (set: "),
        ("[jion]\nwindow_ms = 1\n", {}, [], "['jion'] (did you mean join.window_ms?)"),
        ("[jion]\n", {}, [], "['jion'] (did you mean [join]?)"),
        ("", {"ENCORE_JION__WINDW_MS": "1"}, [], "(did you mean ENCORE_JOIN__WINDOW_MS?)"),
        (
            "",
            {},
            ["join.windw_ms=1", "join.agregate=sum"],
            "(did you mean join.aggregate for join.agregate, join.window_ms for join.windw_ms?)",
        ),
    ],
)
def test_an_unknown_key_names_the_closest_known_one(
    tmp_path: Path, text: str, env: dict[str, str], overrides: list[str], message: str
) -> None:
    f = tmp_path / "c.toml"
    f.write_text(text)
    with pytest.raises(ConfigError) as info:
        Config.load(f, env=env, overrides=overrides)
    assert message in str(info.value)


def test_an_unknown_key_far_from_every_known_one_has_no_suggestion() -> None:
    with pytest.raises(ConfigError) as info:
        Config.load(env={}, overrides=["join.zzzz=1"])
    assert "did you mean" not in str(info.value)
    assert str(info.value).startswith("unknown key(s) ['zzzz'] in [join] (set: join.zzzz by --set)")
