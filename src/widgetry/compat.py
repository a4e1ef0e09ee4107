"""The one place that leans on other libraries' internals (Litestar's and litestar-saq's), and why each is needed.

Each name here is something the service needs that the library offers only under a private name, or not at all.
`tests/unit/test_compat.py` checks every one against the installed versions, so an upgrade that moves or changes one
fails there, naming it, rather than somewhere far away; it also checks that no other module reaches for a private of
these libraries.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

# The parameter type of `AbstractDTO.create_openapi_schema`, a public method whose signature names this private class.
from litestar._openapi.schema_generation import SchemaCreator

# Litestar passes the `app` to the commands of its own click group class, exported only from this private module
# (whose docstring says to use it as the `cls` of a group extending Litestar's CLI). The public alternative,
# `cli.group()` inside `CLIPlugin.on_cli_init`, cannot build the groups at import, where their commands are declared.
from litestar.cli._utils import LitestarGroup

# The parameter type of `AbstractDTO.create_for_field_definition`, a public method whose signature names it.
from litestar.dto._backend import DTOBackend

# The DTO backend whose `parse_raw` decodes a request body: the only place to make decoding strict (`"100"` is not a
# price). Litestar exports no backend, and `DTOConfig` has no option for strictness.
from litestar.dto._codegen_backend import DTOCodegenBackend

if TYPE_CHECKING:
    from litestar_saq import SAQPlugin, Worker

__all__ = ("DTOBackend", "DTOCodegenBackend", "LitestarGroup", "SchemaCreator", "adopt_workers")


def adopt_workers(plugin: SAQPlugin, worker_class: type[Worker]) -> None:
    """Makes the plugin's workers (built now unless they already are) instances of `worker_class`, a subclass of
    litestar-saq's `Worker` that adds behaviour and no state, and turns litestar-saq's heartbeat manager off.

    litestar-saq builds its `Worker`s itself and takes no class to build them from. It also starts a heartbeat thread
    for its `monitored_job` decorator, which no job here uses and which logs a crash on every shutdown: `Worker` takes
    `enable_heartbeat_manager`, but neither the plugin nor `QueueConfig` passes it on, so only the private attribute
    it sets can turn it off. Call this again whenever the plugin is made to build its workers anew (`remove_workers`).
    """
    for worker in plugin.get_workers().values():
        worker.__class__ = worker_class
        worker._enable_heartbeat_manager = False  # noqa: SLF001 - see the docstring
