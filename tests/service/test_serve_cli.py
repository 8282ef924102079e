"""The README's ``python -m derm_exp.serve model=<run id>`` end to end, on the tests' model
trained on generated demo data: a real server process on a free port, asked over loopback
like curl asks it."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.inference.conftest import TrainedModel, run_cli
from tests.service.live_server import serve


@pytest.mark.slow
def test_serve_a_training_run(
    served_model: TrainedModel, images: list[Path], tmp_path: Path
) -> None:
    run_id = served_model.run_id
    store = f"tracking.uri={served_model.tracking_uri}"
    with serve(f"model={run_id}", store, "device=cpu", log=tmp_path / "serve.log") as url:
        image = images[0]
        response = httpx.post(
            f"{url}/predict",
            files={"image": (image.name, image.read_bytes(), "image/jpeg")},
            data={"tta": "light"},
            timeout=60,
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert abs(sum(body["probabilities"].values()) - 1.0) < 1e-4
        assert body["tta"]["mode"] == "light"
        card = httpx.get(f"{url}/model", timeout=10).json()
        assert card["run_id"] == run_id and card["source"]["kind"] == "run"
        assert "balanced_accuracy" in card["test_metrics"]
        bad = httpx.post(f"{url}/predict", files={"image": ("x.txt", b"hi", "text/plain")})
        assert bad.status_code == 415 and "error" in bad.json()
        assert httpx.get(f"{url}/health", timeout=10).json()["status"] == "ok"
    assert "http://127.0.0.1:" in (tmp_path / "serve.log").read_text()


@pytest.mark.slow
def test_serve_without_a_model_is_one_error_line() -> None:
    proc = run_cli("derm_exp.serve", timeout=120)
    assert proc.returncode != 0
    assert proc.stderr.strip().startswith("error: no model given"), proc.stderr
    assert "Traceback" not in proc.stderr
