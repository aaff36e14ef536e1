"""Property-based: random and mangled hook requests never get a 5xx, only documented answers."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cds_service import create_app
from tests.cds_invariants import assert_valid_cds_response
from tests.hook_calls import SERVICE_IDS, hook_body, recent_patient

DOCUMENTED = {200, 400, 404, 412, 413, 415}
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=20,
)


@pytest.fixture(scope="module")
def module_client() -> Iterator[FlaskClient]:
    """One app for all examples (hypothesis runs many examples per test function)."""
    app: Flask = create_app({"TESTING": True, "AUTH_REQUIRED": False})
    yield app.test_client()
    app.extensions["hfs_cds"].close()


def _check(client: FlaskClient, service_id: str, body: Any) -> None:
    response = client.post(
        f"/cds-services/{service_id}", data=json.dumps(body), content_type="application/json"
    )
    assert response.status_code in DOCUMENTED, response.get_data(as_text=True)
    if response.status_code == 200:
        assert_valid_cds_response(response.get_json())
    else:
        assert response.get_json()["resourceType"] == "OperationOutcome"


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=JSON)
def test_arbitrary_json_bodies(module_client: FlaskClient, body: Any) -> None:
    _check(module_client, SERVICE_IDS["patient-view"], body)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield prefix + (key,)
            yield from _paths(item, prefix + (key,))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield prefix + (i,)
            yield from _paths(item, prefix + (i,))


BASE = hook_body("patient-view", recent_patient())
ALL_PATHS = list(_paths(BASE))


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    mutations=st.lists(
        st.tuples(st.sampled_from(ALL_PATHS), st.one_of(JSON, st.just("__delete__"))),
        min_size=1,
        max_size=4,
    )
)
def test_mangled_valid_requests(
    module_client: FlaskClient, mutations: list[tuple[tuple[Any, ...], Any]]
) -> None:
    """Replace or delete values anywhere in a valid request (context, prefetch, resources)."""
    body = copy.deepcopy(BASE)
    for path, value in mutations:
        node: Any = body
        try:
            for key in path[:-1]:
                node = node[key]
            if value == "__delete__":
                del node[path[-1]]
            else:
                node[path[-1]] = value
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation removed this path
    _check(module_client, SERVICE_IDS["patient-view"], body)
