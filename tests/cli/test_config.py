"""Settings of `run` from flags, environment variables and a TOML file."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from cli.config import ConfigError, apply_defaults, env_name
from cli.main import _subparser, build_parser


def run_parser() -> argparse.ArgumentParser:
    return _subparser(build_parser(), "run")


def parse(argv: list[str], environ: dict[str, str]) -> argparse.Namespace:
    run = run_parser()
    apply_defaults(run, argv, environ)
    return run.parse_args(argv)


def test_file_then_environment_then_flag(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text(
        'root-dir = "/srv/node"\nmax_storage = "2GiB"\nport = 12000\nlocal = true\npeer = ["/ip4/127.0.0.1/udp/1/quic-v1"]\n'
    )
    args = parse(["--config", str(config)], {})
    assert args.root_dir == Path("/srv/node")
    assert args.max_storage == 2 * 1024**3
    assert args.port == 12000 and args.local is True
    assert args.peer == ["/ip4/127.0.0.1/udp/1/quic-v1"]
    env = {env_name("max_storage"): "3GiB", env_name("port"): "13000"}
    args = parse(["--config", str(config)], env)
    assert args.max_storage == 3 * 1024**3 and args.port == 13000
    args = parse(["--config", str(config), "--port", "14000"], env)
    assert args.port == 14000, "the flag wins"


def test_environment_alone_and_its_config_variable(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('quic = "aioquic"\n')
    env = {
        env_name("root_dir"): str(tmp_path),
        env_name("config"): str(config),
        env_name("first"): "yes",
    }
    args = parse([], env)
    assert args.root_dir == tmp_path and args.quic == "aioquic" and args.first is True


@pytest.mark.parametrize(
    ("text", "env", "fragment"),
    [
        ('colour = "blue"\n', {}, "unknown setting 'colour'"),
        ('quic = "tcp"\n', {}, "not one of"),
        ("port = [\n", {}, "c.toml"),
        ("", {env_name("max_storage"): "lots"}, "AUTONOMI_ACTORS_MAX_STORAGE"),
        ("", {env_name("local"): "maybe"}, "expected true or false"),
    ],
)
def test_bad_settings_name_the_culprit(
    tmp_path: Path, text: str, env: dict[str, str], fragment: str
) -> None:
    config = tmp_path / "c.toml"
    config.write_text(text)
    with pytest.raises(ConfigError, match=fragment):
        apply_defaults(run_parser(), ["--config", str(config)], env)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        apply_defaults(run_parser(), ["--config", str(tmp_path / "nope.toml")], {})
