"""The team's tracking server: the tiny pipeline (`repro`) logs to `mlflow server` on a throw-away PostgreSQL with a
proxied artifact store (conftest's `tracking_server`). Checked in the database itself, in the server's artifact
directory, through `mlflow models serve` of the champion LDM from the server's registry, and through
`genlab generate`."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import load_file

from genlab.compare import FAMILIES
from genlab.images import save_grid
from tests import servers
from tests.conftest import BIN, TrackingServer, sh

pytestmark = pytest.mark.skipif(servers.pg_ctl() is None, reason="needs PostgreSQL (`make test` installs it)")

TRAINING = ("train_evaluator", "train_vae", "train_ldm", "train_pixel", "train_gan")


def _query(server: TrackingServer, sql: str, *args: object) -> list[tuple]:
    import psycopg2

    with psycopg2.connect(server.backend) as conn, conn.cursor() as cur:
        cur.execute(sql, args)
        return cur.fetchall()


def test_runs_metrics_and_registry_live_in_postgresql(repro: tuple[Path, dict[str, str], str],
                                                      tracking_server: TrackingServer) -> None:
    assert repro[1]["MLFLOW_TRACKING_URI"] == tracking_server.uri
    stages = {v for (v,) in _query(tracking_server, "select value from tags where key = 'genlab.stage'")}
    assert {*TRAINING, "evaluate"} <= stages
    points = _query(tracking_server, "select count(*) from metrics m join tags t on t.run_uuid = m.run_uuid "
                    "where t.key = 'genlab.stage' and t.value = 'train_ldm' and m.key = 'loss'")[0][0]
    assert points >= 3
    kind = _query(tracking_server, "select t.value from experiment_tags t join experiments e on "
                  "e.experiment_id = t.experiment_id where e.name = 'genlab' and t.key = 'mlflow.experimentKind'")
    assert kind == [("custom_model_development",)]
    aliases = {name for name, alias in _query(tracking_server, "select name, alias from registered_model_aliases")
               if alias == "champion"}
    assert aliases == {f"genlab-{f}" for f in FAMILIES}
    data_hash = json.loads((repro[0] / "data/prepared/manifest.json").read_text())["content_hash"]
    digests = {d for (d,) in _query(tracking_server, "select digest from datasets")}
    assert digests == {data_hash[:36]}  # every run's dataset input: the prepared data, by content


def test_artifacts_are_uploaded_through_the_server(repro: tuple[Path, dict[str, str], str],
                                                   tracking_server: TrackingServer) -> None:
    uris = {u for (u,) in _query(tracking_server, "select artifact_uri from runs")}
    assert uris and all(u.startswith("mlflow-artifacts:/") for u in uris)  # no client writes to a local path
    models = list(tracking_server.artifacts.rglob("MLmodel"))
    assert len(models) >= len(FAMILIES)
    # every training stage shared its checkpoints through the server while it ran, and dropped them when it finished
    assert not list(tracking_server.artifacts.rglob("train_state/*.pt"))
    shared = _query(tracking_server, "select count(*) from tags where position('genlab.train_state.' in key) = 1")[0][0]
    assert shared == 0
    assert list(tracking_server.artifacts.rglob("model.safetensors"))


def _post(url: str, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=300) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_served_champion_answers_like_the_sample_stage(repro: tuple[Path, dict[str, str], str],
                                                       tracking_server: TrackingServer, tmp_path: Path) -> None:
    root, env = repro[0], repro[1]
    port = servers.free_port()
    log = tmp_path / "serve.log"
    cmd = [str(BIN / "mlflow"), "models", "serve", "-m", "models:/genlab-ldm@champion", "--env-manager", "local",
           "-h", "127.0.0.1", "-p", str(port)]
    url = f"http://127.0.0.1:{port}"
    with servers.started(cmd, log, env, cwd=root) as proc:
        servers.wait_http(f"{url}/ping", proc, log, timeout=180)
        s = load_file(str(root / "samples" / "ldm.safetensors"))
        pick = [0, 13, 39]
        rows = [[int(s["labels"][i]), int(s["seeds"][i])] for i in pick]
        status, answer = _post(f"{url}/invocations", {"dataframe_split": {"columns": ["label", "seed"], "data": rows}})
        assert status == 200, answer
        np.testing.assert_allclose(np.array(answer["predictions"], dtype=np.float32), s["images"][pick].numpy(),
                                   atol=1e-4)  # the sample stage's images, from (label, seed) alone
        bad = {  # request -> what the one-line message must say
            "label 12": ({"columns": ["label", "seed"], "data": [[12, 0]]}, None, "`label` 12: unknown"),
            "steps over T": ({"columns": ["label", "seed"], "data": [[1, 0]]}, {"sample_steps": 5000},
                             "`sample_steps` 5000: at most 100"),
            "fractional steps": ({"columns": ["label", "seed"], "data": [[1, 0]]}, {"sample_steps": 2.5},
                                 "`sample_steps` 2.5: expected a whole number"),
            "negative guidance": ({"columns": ["label", "seed"], "data": [[1, 0]]}, {"guidance_scale": -1.0},
                                  "`guidance_scale` -1.0: expected a number >= 0"),
            "long prompt": ({"columns": ["label", "seed", "prompt"], "data": [[1, 0, "seven " * 40]]}, None,
                            "tokens, the text encoder takes at most 16"),
            "label as text": ({"columns": ["label", "seed"], "data": [["seven", 0]]}, None, "label"),
        }
        for name, (split, params, says) in bad.items():
            status, answer = _post(f"{url}/invocations", {"dataframe_split": split, **({"params": params} if params
                                                                                       else {})})
            assert 400 <= status < 500 and says in answer["message"], (name, status, answer)


def test_generate_writes_the_served_images_as_a_grid(repro: tuple[Path, dict[str, str], str],
                                                      tmp_path: Path) -> None:
    root, env = repro[0], repro[1]
    s = load_file(str(root / "samples" / "ldm.safetensors"))
    label, seed = int(s["labels"][13]), int(s["seeds"][13])
    out = tmp_path / "grid.png"
    proc = sh(["genlab", "generate", "--label", str(label), "--seed", str(seed), "-n", "1", "-o", str(out)], root, env)
    assert f"wrote {out}: 1 images from models:/genlab-ldm@champion, label {label}" in proc.stdout
    save_grid(s["images"][13:14], tmp_path / "expected.png")
    got, expected = (np.asarray(Image.open(p), dtype=np.int16) for p in (out, tmp_path / "expected.png"))
    assert got.shape == expected.shape and np.abs(got - expected).max() <= 1  # uint8 rounding of 1e-4 differences
    sh(["genlab", "generate", "--prompt", "a handwritten seven", "-n", "4", "-o", str(tmp_path / "p.png")], root, env)
    assert Image.open(tmp_path / "p.png").size == (4 * (2 * 17 + 1),) * 2  # 2x2 grid of 16 px, 1 px borders, x4
    refused = sh(["genlab", "generate", "--label", "12", "-o", str(tmp_path / "x.png")], root, env, check=False)
    assert refused.returncode == 2 and not (tmp_path / "x.png").exists()
    assert refused.stderr.strip().splitlines() == [
        "genlab: error: models:/genlab-ldm@champion: `label` 12: unknown, expected 0 to 9"]


def test_a_training_state_shared_on_the_server_is_fetched_by_its_fingerprint_only(
        tracking_server: TrackingServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What lets a stage killed on one machine resume on another: the checkpoint goes to its (unfinished) run on the
    server; another project fetches it for the same fingerprint only, and not once the run has finished."""
    import mlflow
    import torch
    from mlflow.tracking import MlflowClient

    from genlab import tracking
    from genlab.checkpoint import save_train_state

    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_server.uri)
    a, b = tmp_path / "machine-a", tmp_path / "machine-b"
    exp_id = tracking.setup(a)
    client = MlflowClient()
    run_id = client.create_run(exp_id, run_name="train_test", tags={"genlab.stage": "train_test"}).info.run_id
    fp = "f" * 64
    ckpt = a / "checkpoints" / "train_test.pt"
    save_train_state({"fingerprint": fp, "mlflow_run_id": run_id, "step": 3, "w": torch.arange(5.0)}, ckpt)
    tracking.share_train_state(run_id, ckpt, fp)

    fetched = b / "checkpoints" / "train_test.pt"
    assert tracking.fetch_train_state(b, fetched, "e" * 64) is None and not fetched.exists()  # other params
    assert tracking.fetch_train_state(b, fetched, fp) == run_id
    assert fetched.read_bytes() == ckpt.read_bytes()
    assert tracking.fetch_train_state(b, fetched, fp) is None  # it has its own now
    assert not [p for p in fetched.parent.iterdir() if p != fetched]  # no download folder left

    client.set_terminated(run_id, "FINISHED")  # a finished run's state is never resumed
    assert tracking.fetch_train_state(tmp_path / "machine-c", tmp_path / "machine-c" / "checkpoints" /
                                      "train_test.pt", fp) is None
    tracking.drop_train_state(run_id, ckpt)
    assert not client.list_artifacts(run_id, tracking.TRAIN_STATE_DIR)
    assert "genlab.train_state.train_test" not in client.get_run(run_id).data.tags
    assert mlflow.get_tracking_uri() == tracking_server.uri
