"""The `oidc:` and `access:` sections, read from a YAML file like an operator writes them."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.config import load_settings
from broker.exceptions import ConfigError

GOOD = """
oidc:
  issuers:
    - issuer: https://login.example.com/
      audience: jitgate
      group_mapping: {okta-dba: [dba]}
access:
  default_ttl: 30m
  rules:
    - {groups: [ai-agents], resources: [demo], roles: [readonly], approval: auto, max_ttl: 2h}
"""


def test_sections_load(tmp_path: Path) -> None:
    path = tmp_path / "jitgate.yaml"
    path.write_text(GOOD)
    settings = load_settings(path)
    issuer = settings.oidc.issuers[0]
    assert (issuer.issuer, issuer.groups_claim, issuer.algorithms) == (
        "https://login.example.com/", "groups", ["RS256", "ES256"]
    )
    assert settings.access.rules[0].max_ttl_delta.total_seconds() == 7200


@pytest.mark.parametrize(
    ("text", "where"),
    [
        (GOOD.replace("max_ttl: 2h", "max_ttl: soon"), "access.rules[0].max_ttl"),
        (GOOD.replace("audience: jitgate", "audience: jitgate\n      algorithms: [HS256]"),
         "oidc.issuers[0].algorithms[0]"),
        (GOOD.replace("approval: auto", "approval: maybe"), "access.rules[0].approval"),
    ],
)
def test_bad_values_name_their_key(tmp_path: Path, text: str, where: str) -> None:
    path = tmp_path / "jitgate.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert where in str(info.value)
