"""`OPTIONS` tells every method a path serves, on every path of the app."""

from __future__ import annotations

import re
import uuid

import httpx
from litestar import Litestar
from litestar.routes import HTTPRoute

PATH_PARAMETER = re.compile(r"\{(\w+):(\w+)\}")
SAMPLE_BY_TYPE = {"str": "A-1", "uuid": str(uuid.uuid4()), "path": "file.css", "int": "1"}


def concrete(path_format: str) -> str:
    return PATH_PARAMETER.sub(lambda found: SAMPLE_BY_TYPE[found[2]], path_format)


async def test_options_on_widgets_lists_reads_and_writes(client: httpx.AsyncClient) -> None:
    collection = await client.options("/widgets")
    item = await client.options("/widgets/A-1")

    assert collection.status_code == item.status_code == 204
    assert collection.headers["allow"] == "GET, OPTIONS, POST"
    assert item.headers["allow"] == "DELETE, GET, OPTIONS, PATCH"


async def test_options_on_every_open_path_lists_every_method_it_serves(
    app: Litestar, client: httpx.AsyncClient
) -> None:
    served = {route.path: set(route.methods) for route in app.routes if isinstance(route, HTTPRoute)}
    answers = {path: await client.options(concrete(path)) for path in served}
    # Paths behind a sign-in (the dashboard's pages, SAQ's) refuse OPTIONS too, as any request without it.
    answered = {path: response for path, response in answers.items() if response.status_code == 204}

    assert {"/widgets", "/widgets/{sku:str}", "/widgets/imports", "/events", "/metrics"} <= answered.keys()
    assert {
        path: response.headers["allow"]
        for path, response in answered.items()
        if set(response.headers["allow"].split(", ")) != served[path]
    } == {}
