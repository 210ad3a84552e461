"""`kdsr serve`: request validation (every refused input names its field, never a 500) and a real Ray Serve app on
loopback answering like the Python API, through an HTTP client, under concurrent requests (batched)."""

from __future__ import annotations

import json
import math
import socket
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from jobs import serve as serve_job
from trainer.recommend import Recommendation, Recommender, RecommendError
from trainer.serve import Parsed, parse_request
from trainer.use_config import ServeConfig

TIMEOUT = 60  # seconds per HTTP request: bounded even on a loaded machine


@pytest.fixture(scope="module")
def rec(toy_run):
    return Recommender.load(toy_run)


@pytest.mark.parametrize(
    "body, field, message",
    [
        (b"{not json", "body", "body: not valid JSON"),
        (b"", "body", "body: not valid JSON"),
        (b"[1, 2]", "body", "body: expected a JSON object"),
        (b'{"k": 3}', "history", "history: required, a list of item IDs"),
        (b'{"history": "i0003"}', "history", "history: required, a list of item IDs"),
        (b'{"history": [{"id": 1}]}', "history", "history[0]: must be a string or integer item ID"),
        (b'{"history": [true]}', "history", "history[0]: must be a string or integer item ID"),
        (b'{"history": ["i0001","i0002","i0003","i0004","i0005","i0006"]}', "history", "6 items, at most 5"),
        (b'{"history": ["i0003"], "k": 0}', "k", "k: must be between 1 and 30, got 0"),
        (b'{"history": ["i0003"], "k": -2}', "k", "k: must be between 1 and 30, got -2"),
        (b'{"history": ["i0003"], "k": 31}', "k", "k: must be between 1 and 30, got 31"),
        (b'{"history": ["i0003"], "k": 2.5}', "k", "k: must be an integer"),
        (b'{"history": ["i0003"], "k": "5"}', "k", "k: must be an integer"),
        (b'{"history": ["i0003"], "n": 5}', "n", "n: unknown field"),
        (b'{"history": ["i0003", "nope"]}', "history", "history[1]: item 'nope' is not in the run's catalog"),
        (b'{"history": []}', "history", "history: empty"),
    ],
)
def test_bad_requests_name_the_field(rec, toy_run, body, field, message):
    cfg = ServeConfig(run=str(toy_run), max_history=5, unknown_items="error")
    with pytest.raises(RecommendError, match=message.replace("[", r"\[").replace("]", r"\]")) as e:
        parse_request(rec, cfg, body)
    assert e.value.field == field


def test_good_requests_parse(rec, toy_run):
    cfg = ServeConfig(run=str(toy_run), empty_history="popular")
    parsed = parse_request(rec, cfg, b'{"history": ["i0003", 5, "nope"]}')
    assert isinstance(parsed, Parsed) and parsed.k == 10 and parsed.unknown == 2 and parsed.ids.tolist() == [3]
    popular = parse_request(rec, cfg, b'{"history": ["nope"], "k": 3}')
    assert isinstance(popular, Recommendation) and popular.popular and popular.unknown == 1
    assert popular.items == list(rec.item_ids[rec.popular(3)]) and all(math.isnan(s) for s in popular.scores)


@pytest.fixture(scope="module")
def endpoint(toy_run):
    """The app started by `kdsr serve ... blocking=false` on a free loopback port; shut down afterwards."""
    import ray
    from ray import serve

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = ["blocking=false", f"port={port}", "ray.num_cpus=2", "replica_cpus=0.5", "max_batch_size=8"]
    try:
        assert serve_job.main([str(toy_run), *args, "unknown_items=error", "max_history=20"]) == 0
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.mark.slow
def test_endpoint_over_http(endpoint, rec):
    health = requests.get(f"{endpoint}/health", timeout=TIMEOUT)
    assert health.status_code == 200 and health.json()["items"] == 30
    histories = [[f"i{(3 * n) % 30 + 1:04d}", f"i{(7 * n) % 30 + 1:04d}"] for n in range(24)]

    def ask(n):
        return requests.post(f"{endpoint}/recommend", json={"history": histories[n], "k": 3 + n % 5}, timeout=TIMEOUT)

    with ThreadPoolExecutor(8) as pool:  # concurrent: the replica scores them in batches
        answers = list(pool.map(ask, range(len(histories))))
    for n, r in enumerate(answers):
        assert r.status_code == 200, r.text
        want = rec.recommend_one(histories[n], k=3 + n % 5)
        assert r.json()["items"] == want.items and r.json()["scores"] == pytest.approx(want.scores, rel=1e-5)
        assert r.json()["unknown"] == 0 and r.json()["popular"] is False
    # refused requests: 4xx naming the field, never a 500
    for body, status, field in (
        (b"{oops", 400, "body"),
        (json.dumps({"history": ["i0003"], "k": 0}).encode(), 422, "k"),
        (json.dumps({"history": ["i0003"], "k": 31}).encode(), 422, "k"),
        (json.dumps({"history": ["i0003", "missing"]}).encode(), 422, "history"),
        (json.dumps({"history": ["i0003"] * 21}).encode(), 422, "history"),
    ):
        r = requests.post(f"{endpoint}/recommend", data=body, timeout=TIMEOUT)
        assert r.status_code == status and r.json()["field"] == field, (body, r.text)
    assert requests.get(f"{endpoint}/recommend", timeout=TIMEOUT).status_code == 405
    assert requests.get(f"{endpoint}/nothing-here", timeout=TIMEOUT).status_code == 404
