"""Shared fixtures: the real configs, composed as the command line composes them."""

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from harness import project_root
from postgres_server import postgres, postgres_server  # noqa: F401 (one PostgreSQL server for the session)

CONF = str(project_root() / "conf")


@pytest.fixture
def compose_config():
    """compose_config(["variant=cifg", ...]) -> the root config as `odyssey` builds it."""

    def _compose(overrides=(), command="train"):
        with initialize_config_dir(config_dir=CONF, version_base="1.3"):
            return compose(config_name="config", overrides=[*overrides, f"command={command}"])

    return _compose


@pytest.fixture
def float64():
    """float64 as the default dtype for a test (tolerances of 1e-8 and gradcheck need it)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


SHIPPED_PICKLE = Path(__file__).parent / "data" / "jsb-chorales-quarter.pkl"
