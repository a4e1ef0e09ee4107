"""The development key of the embedded defaults: made once, kept beside the SQLite file, printed at every start."""

from __future__ import annotations

import re
import stat
from pathlib import Path

import httpx

from tests.support import Server
from widgetry.settings import DEV_KEY_FILE

BODY = {"sku": "DEV-1", "name": "Kept", "price_cents": 1}


def printed_key(server: Server) -> str:
    found = re.search(r"development API key[^:]*: (\S+)", server.output)
    assert found is not None, server.output
    return found[1]


def test_the_development_key_survives_a_restart_in_a_file_only_its_owner_reads(tmp_path: Path) -> None:
    first = Server({"WIDGETRY_API_KEYS": ""}, tmp_path, "first")
    try:
        key = printed_key(first)
    finally:
        first.stop()
    second = Server({"WIDGETRY_API_KEYS": ""}, tmp_path, "second")
    try:
        accepted = httpx.post(f"{second.url}/widgets", json=BODY, headers={"X-API-Key": key})
        refused = httpx.post(f"{second.url}/widgets", json=BODY, headers={"X-API-Key": "dev-guess"})
        again = printed_key(second)
    finally:
        second.stop()

    assert (accepted.status_code, refused.status_code) == (202, 401)
    assert again == key
    kept = tmp_path / DEV_KEY_FILE
    assert kept.read_text() == f"{key}\n"
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    assert sorted(path.name for path in tmp_path.iterdir() if "dev-key" in path.name) == [DEV_KEY_FILE]
