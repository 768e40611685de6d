"""ListSessions: filters, newest first, keyset pages, tokens bound to filters."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from google.protobuf import timestamp_pb2

from processflow.v1 import processflow_service_pb2 as pb
from processflow.v1 import resources_pb2 as res
from server.errors import InvalidArgument
from server.store import Store
from tests.integration.store_helpers import T, start


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    store = Store.connect(database_url)
    for index in range(7):
        store.start_session(
            T,
            start(
                f"s{index}",
                user_id="even" if index % 2 == 0 else "odd",
                # s3 to s6 share a start time: the id breaks the tie.
                start_time=timestamp_pb2.Timestamp(
                    seconds=1_800_000_000 + min(index, 3) * 60
                ),
            ),
        )
    store.complete_session(
        T, pb.CompleteSessionRequest(session_id="s2", status=res.SESSION_STATUS_ERROR)
    )
    yield store
    store.close()


def all_pages(store: Store, request: pb.ListSessionsRequest) -> list[list[str]]:
    pages: list[list[str]] = []
    while True:
        response = store.list_sessions(T, request)
        pages.append([s.session_id for s in response.sessions])
        if not response.next_page_token:
            return pages
        request.page_token = response.next_page_token


def test_pages_cover_every_session_newest_first(store: Store) -> None:
    pages = all_pages(store, pb.ListSessionsRequest(page_size=2))
    assert pages == [["s6", "s5"], ["s4", "s3"], ["s2", "s1"], ["s0"]]
    assert all_pages(store, pb.ListSessionsRequest()) == [
        ["s6", "s5", "s4", "s3", "s2", "s1", "s0"]
    ]


def test_filters(store: Store) -> None:
    assert all_pages(store, pb.ListSessionsRequest(user_id="odd", page_size=2)) == [
        ["s5", "s3"],
        ["s1"],
    ]
    errors = pb.ListSessionsRequest(status=res.SESSION_STATUS_ERROR)
    assert all_pages(store, errors) == [["s2"]]
    window = pb.ListSessionsRequest(
        start_time_from=timestamp_pb2.Timestamp(seconds=1_800_000_060),
        start_time_to=timestamp_pb2.Timestamp(seconds=1_800_000_180),
    )
    assert all_pages(store, window) == [["s2", "s1"]]


def test_token_is_bound_to_its_filters(store: Store) -> None:
    first = store.list_sessions(T, pb.ListSessionsRequest(user_id="odd", page_size=1))
    with pytest.raises(InvalidArgument) as raised:
        store.list_sessions(
            T,
            pb.ListSessionsRequest(
                user_id="even", page_size=1, page_token=first.next_page_token
            ),
        )
    assert [v.field for v in raised.value.violations] == ["page_token"]
    with pytest.raises(InvalidArgument):
        store.list_sessions(T, pb.ListSessionsRequest(page_token="not-a-token!"))
    # The page size may change between pages.
    second = store.list_sessions(
        T,
        pb.ListSessionsRequest(
            user_id="odd", page_size=5, page_token=first.next_page_token
        ),
    )
    assert [s.session_id for s in second.sessions] == ["s3", "s1"]
