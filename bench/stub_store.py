"""``processflow serve`` with the store's writes replaced by fixed answers:
everything a unary write costs except the database work (gRPC, request
parsing, the boundary and auth wrappers, logging, metrics and the hop to the
database threads). bench/ceiling.py measures it beside the real server; it is
a measuring tool, never a way to run ProcessFlow.

Run as ``python -m bench.stub_store serve --listen ... --database-url ...``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from processflow.cli import main
from processflow.v1 import processflow_service_pb2 as pb
from processflow.v1 import resources_pb2 as res
from server.store import Store


def _answer(response: Any) -> Callable[[Store, str, Any], Any]:
    def write(_store: Store, _tenant_id: str, _request: Any) -> Any:
        return response

    return write


def stub_writes() -> None:
    """Makes every unary write of the benchmark's session mix answer at once."""
    started = pb.StartSessionResponse(session=res.Session(session_id="stub"))
    Store.start_session = _answer(started)  # type: ignore[method-assign]
    Store.record_step = _answer(pb.RecordStepResponse())  # type: ignore[method-assign]
    Store.record_llm_call = _answer(pb.RecordLlmCallResponse())  # type: ignore[method-assign]
    Store.complete_session = _answer(pb.CompleteSessionResponse())  # type: ignore[method-assign]


if __name__ == "__main__":
    stub_writes()
    sys.exit(main(sys.argv[1:]))
