"""The API docs page works offline: everything it loads comes from the service itself."""

from __future__ import annotations

import re

import httpx
import pytest


@pytest.mark.parametrize("path", ["/schema", "/schema/swagger"])
async def test_the_docs_page_loads_only_what_the_service_serves(client: httpx.AsyncClient, path: str) -> None:
    page = await client.get(path)
    assert page.status_code == 200
    assert "text/html" in page.headers["content-type"]
    loaded = re.findall(r'(?:src|href)=["\']([^"\']+)["\']', page.text)
    assert loaded, page.text[:500]
    assert [url for url in loaded if "//" in url] == []
    for url in loaded:
        asset = await client.get(url)
        assert asset.status_code == 200, url
        assert len(asset.content) > 100, url
