"""From a finished run to a serving ranker: ``export=true``, ``rankgym export`` and the real
HTTP server (``rankgym serve`` in a subprocess, called over a socket by a real client)."""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rankgym.agents.ranker import Ranker
from rankgym.experiments import export
from tests.commands import ROOT, SMALL, exits, hydra_job, train_tiny


@pytest.fixture(scope="module")
def ppo_run(tiny_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny PPO run (tiny BERT encoder) trained with ``export=true``, on the session's tiny
    world (its own run directory: not the session's shared PPO run, which is not exported)."""
    run = tmp_path_factory.mktemp("serve") / "run"
    train_tiny(tiny_root, run, "agent=ppo", "total_timesteps=256", "eval.freq=256", "export=true",
               *SMALL["ppo"])  # fmt: skip
    return run


def test_train_with_export_writes_a_ranker_of_the_run(ppo_run: Path) -> None:
    ranker = Ranker.load(ppo_run / "ranker")
    manifest = ranker.manifest
    metrics = json.loads((ppo_run / "metrics.json").read_text())
    assert manifest["policy"] == {"name": "ppo", "kind": "sb3", "algorithm": "ppo"}
    # the default PPO ranks whole slates with a position-free scorer: the ranker sorts once
    assert manifest["action"] == "sort" and manifest["encoder"]["kind"] == "onnx"
    assert manifest["run"]["metrics"]["expected_clicks"] == metrics["expected_clicks"]
    assert manifest["run"]["path"] == str(ppo_run.resolve())
    ids = json.loads((ppo_run / "ranker" / "items.json").read_text())
    ranked = ranker.rank("blender", ids[:2], [*ids[2:6], {"item_id": "new", "text": "red mixer"}])
    assert sorted(i for i, _ in ranked) == sorted([*ids[2:6], "new"])


def test_export_command_for_a_baseline_and_its_refusals(
    tiny_root: Path, cosine_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``rankgym export`` (in-process) of the session's cosine run, and what it refuses."""

    def export_job(*overrides: str) -> Any:
        return hydra_job(export.main, *overrides, run_dir=tmp_path / "log", config_name="export")

    out = tmp_path / "cosine-ranker"
    export_job(f"run={cosine_run}", f"out={out}", "with_encoder=false")
    manifest = Ranker.load(out).manifest
    assert manifest["action"] == "sort" and manifest["encoder"]["kind"] == "none"
    assert not (out / "encoder.onnx").exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    refusals = {
        f"out={mine}": "holds files rankgym did not write",
        f"run={tmp_path / 'nowhere'}": "run_config.yaml: missing",
    }
    for override, message in refusals.items():
        args = [f"run={cosine_run}", override] if override.startswith("out") else [override]
        code, err = exits(capsys, lambda args=args: export_job(*args))
        assert code == 2 and message in err, err[-2000:]
    assert (mine / "notes.txt").read_text() == "keep" and len(list(mine.iterdir())) == 1
    code, err = exits(capsys, lambda: train_tiny(tiny_root, tmp_path / "random", "agent=random",
                                                 "export=true"))  # fmt: skip
    assert code == 2
    assert "agent=random cannot be exported; allowed: ppo" in err


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(ppo_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``rankgym serve`` on a free port (at most 8 candidates, 64 KiB bodies)."""
    port = free_port()
    log = tmp_path_factory.mktemp("serve-log")
    process = subprocess.Popen(
        [sys.executable, "-m", "rankgym.experiments.serve", f"ranker={ppo_run / 'ranker'}",
         f"port={port}", "max_candidates=8", "max_body_bytes=65536", "log_level=warning",
         f"hydra.run.dir={log}"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        try:
            urllib.request.urlopen(f"{url}/health", timeout=2)
            break
        except (urllib.error.URLError, ConnectionError):
            if process.poll() is not None or time.time() > deadline:
                process.kill()
                pytest.fail(f"server did not start: {process.stdout.read()[-2000:]}")
            time.sleep(0.2)
    yield url
    process.terminate()
    process.wait(timeout=30)


def call(url: str, path: str, body: Any = None, raw: bytes | None = None) -> tuple[int, Any]:
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    request = urllib.request.Request(f"{url}{path}", data=data,
                                     headers={"content-type": "application/json"})  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_server_ranks_as_the_ranker_does(server: str, ppo_run: Path) -> None:
    ranker = Ranker.load(ppo_run / "ranker")
    ids = json.loads((ppo_run / "ranker" / "items.json").read_text())
    body = {
        "query": "blender",
        "user_history": ids[:3],
        "candidates": [*ids[10:15], {"item_id": "new", "text": "steel kettle"}],
        "k": 4,
    }
    status, answer = call(server, "/rank", body)
    assert status == 200
    expected = ranker.rank(body["query"], body["user_history"], body["candidates"], k=4)
    assert [(x["item_id"], pytest.approx(x["score"], abs=1e-6)) for x in answer["items"]] == [
        (i, s) for i, s in expected
    ]
    status, explained = call(server, "/explain", body)
    assert status == 200 and [x["item_id"] for x in explained["items"]] == [i for i, _ in expected]
    assert set(explained["items"][0]["parts"]) == {"query", "user", "item_bias", "remainder"}
    status, health = call(server, "/health")
    assert status == 200 and health["status"] == "ok" and health["max_candidates"] == 8
    assert health["policy"]["name"] == "ppo" and health["encoder"]["kind"] == "onnx"


@pytest.mark.parametrize(
    ("body", "raw", "status", "message"),
    [
        (None, b'{"candidates": [', 400, "malformed JSON"),
        ({"candidates": ["i0001"], "colour": "red"}, None, 422, "colour: Extra inputs"),
        ({"candidates": []}, None, 422, "candidates: List should have at least 1 item"),
        ({"candidates": ["i0001"], "k": 0}, None, 422, "k: Input should be greater than"),
        ({"candidates": [{"item_id": "x"}]}, None, 422, "unknown item 'x' without a text"),
        ({"candidates": [f"i{c:04d}" for c in range(9)]}, None, 422, "at most 8"),
        ({"candidates": ["i0001"], "user_history": "i0002"}, None, 422, "user_history"),
        (None, b"[" + b'"x",' * 40000 + b'"x"]', 413, "over 65536 bytes"),
    ],
)
def test_server_answers_bad_requests_with_a_message(
    server: str, body: Any, raw: bytes | None, status: int, message: str
) -> None:
    got, answer = call(server, "/rank", body, raw)
    assert got == status and message in answer["error"], answer
    assert call(server, "/health")[0] == 200  # and it keeps serving


def test_server_refuses_a_streamed_oversized_body(server: str) -> None:
    host, port = server.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    chunks = (b'{"candidates": [' + b'"i0001",' * 1000 for _ in range(20))  # no content-length
    connection.request("POST", "/rank", body=chunks, encode_chunked=True,
                       headers={"content-type": "application/json"})  # fmt: skip
    response = connection.getresponse()
    assert response.status == 413 and b"over 65536 bytes" in response.read()
    assert call(server, "/health")[0] == 200
