"""The FastAPI app: ``POST /predict``, ``GET /health``, ``GET /model``, the web page at ``/``.

Research and education only; not a medical device. Do not use for diagnosis.

:func:`create_app` wraps a loaded model (:func:`derm_exp.inference.prediction_model.
load_prediction_model`): requests are micro-batched (:mod:`derm_exp.service.batching`), uploads
checked (:mod:`derm_exp.service.limits`), and every refusal is a JSON ``{"error": "..."}`` with
a 4xx status (5xx for a busy or failing server), never a crash of the server.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from derm_exp.errors import UserError
from derm_exp.inference.prediction_model import PredictionModel
from derm_exp.inference.predictor import DISCLAIMER, SkinLesionPredictor
from derm_exp.inference.tta import tta_modes
from derm_exp.service import explain as explaining
from derm_exp.service.api_docs import add_api_docs
from derm_exp.service.batching import BatchSettings, MicroBatcher, QueueFull
from derm_exp.service.limits import BodySizeLimit, Limits, RequestError, check_content_type
from derm_exp.service.metadata import AGE_RANGE, form_fields
from derm_exp.service.model_card import model_card
from derm_exp.service.preparing import Prepared, predict_prepared, prepare

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
TTA_HELP = ", ".join(tta_modes())
ARRIVAL = "derm_exp.arrival"  # the request's batching.Arrival in the ASGI scope
AGE_HELP = (
    f"Patient age in years ({AGE_RANGE[0]:g}-{AGE_RANGE[1]:g}; optional, for a metadata model; "
    "an image-only model ignores it)"
)
SEX_HELP = "Patient sex, e.g. male or female (optional; GET /model lists the values)"
SITE_HELP = "Body site, e.g. back, face, lower extremity (optional; GET /model lists the values)"


@dataclass(frozen=True)
class ServiceSettings:
    """How the service batches, what it accepts, and which explanation it draws."""

    batching: BatchSettings = field(default_factory=BatchSettings)
    limits: Limits = field(default_factory=Limits)
    explain_method: str = "gradcam"
    # Swagger UI's files for /docs (None: the fastapi-offline package's; see api_docs).
    docs_assets_dir: str | None = None
    # Threads decoding and preprocessing uploads outside the model thread (bounded pool).
    prep_threads: int = 2


def create_app(loaded: PredictionModel, settings: ServiceSettings | None = None) -> FastAPI:
    """The app serving ``loaded`` (one classifier or an ensemble)."""
    settings = settings or ServiceSettings()
    batcher = MicroBatcher(
        lambda items, tta: predict_prepared(loaded, items, tta), settings.batching
    )
    prep_pool = ThreadPoolExecutor(max(1, settings.prep_threads), thread_name_prefix="derm-prep")
    card = model_card(loaded)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await batcher.start()
        try:
            yield
        finally:
            await batcher.stop()
            prep_pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        title="derm_exp skin-lesion classifier",
        description=f"{DISCLAIMER} Upload a dermoscopy image to POST /predict.",
        version="1",
        lifespan=lifespan,
        docs_url=None,  # FastAPI's pages load Swagger UI / ReDoc from a CDN: see api_docs
        redoc_url=None,
    )
    app.state.batcher, app.state.loaded, app.state.settings = batcher, loaded, settings
    app.add_middleware(BodySizeLimit, limits=settings.limits)
    app.add_middleware(CountArrivals, batcher=batcher)
    _add_error_handlers(app)
    _add_routes(app, loaded, settings, batcher, card, prep_pool)
    app.state.docs_assets = add_api_docs(app, settings.docs_assets_dir)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


class CountArrivals:
    """ASGI middleware: a ``POST /predict`` counts as arriving (the batcher waits for it) from
    its first byte until it is submitted or refused."""

    def __init__(self, app: Any, batcher: MicroBatcher) -> None:
        self.app = app
        self.batcher = batcher

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("path") != "/predict":
            await self.app(scope, receive, send)
            return
        with self.batcher.arriving() as arrival:
            scope[ARRIVAL] = arrival
            await self.app(scope, receive, send)


def _add_routes(
    app: FastAPI,
    loaded: PredictionModel,
    settings: ServiceSettings,
    batcher: MicroBatcher,
    card: dict[str, Any],
    prep_pool: ThreadPoolExecutor,
) -> None:
    limits = settings.limits

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/health", summary="Liveness, the model's name and batching counters")
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "model": loaded.description,
            "batching": {**vars(settings.batching), **batcher.stats.as_dict()},
            "explanations": explaining.explanations_available(),
            "disclaimer": DISCLAIMER,
        }

    @app.get("/model", summary="The model card: classes, data, metrics, calibration, abstention")
    async def model() -> dict[str, Any]:
        return {**card, "tta_modes": tta_modes(), "limits": _limits_card(limits)}

    @app.post(
        "/predict",
        summary="Class probabilities for one image (multipart upload, optional patient metadata)",
    )
    async def predict(
        request: Request,
        image: Annotated[UploadFile, File(description="A JPEG, PNG, WebP, BMP or TIFF image")],
        tta: Annotated[str, Form(description=f"Test-time augmentation: {TTA_HELP}")] = "none",
        explain: Annotated[bool, Form(description="Also return a heat map (base64 PNG)")] = False,
        age: Annotated[str | None, Form(description=AGE_HELP)] = None,
        sex: Annotated[str | None, Form(description=SEX_HELP)] = None,
        localization: Annotated[str | None, Form(description=SITE_HELP)] = None,
    ) -> JSONResponse:
        started = time.perf_counter()
        check_content_type(image.content_type, limits)
        if tta != "none":
            SkinLesionPredictor.tta_preset(tta)  # unknown mode -> 422 before queueing
        given = form_fields(age=age, sex=sex, localization=localization)
        data = await image.read()
        loop = asyncio.get_running_loop()
        prepared: Prepared = await loop.run_in_executor(
            prep_pool, prepare, loaded, data, limits, given
        )
        pil = prepared.image
        arrival = request.scope.get(ARRIVAL)
        result = await _run(batcher.submit(prepared, tta, limits.request_timeout_s, arrival))
        out: dict[str, Any] = {**result, "image": {"width": pil.width, "height": pil.height}}
        if prepared.metadata is not None:
            out.update(prepared.metadata.response())
        if explain:
            try:
                record = None if prepared.metadata is None else prepared.metadata.record
                out["explanation"] = await _explanation(
                    batcher, loaded, pil, record, settings, result
                )
            except Exception as exc:  # noqa: BLE001 - the prediction stands without its map
                if not isinstance(exc, RequestError):
                    log.exception("explanation failed")
                out["explanation_error"] = getattr(exc, "message", None) or type(exc).__name__
        out["model"] = loaded.description
        out["elapsed_ms"] = round(1000 * (time.perf_counter() - started), 1)
        return JSONResponse(jsonable_encoder(out))


async def _run(awaitable: Any) -> Any:
    """Await a batched prediction; queue full -> 503, timeout -> 504."""
    try:
        return await awaitable
    except QueueFull as exc:
        raise RequestError(503, str(exc)) from None
    except TimeoutError:
        raise RequestError(504, "the prediction timed out: the server is overloaded") from None


async def _explanation(
    batcher: MicroBatcher,
    loaded: PredictionModel,
    image: Any,
    record: dict[str, str] | None,
    settings: ServiceSettings,
    result: dict[str, Any],
) -> dict[str, Any]:
    """The heat map for the predicted class, computed on the model thread from the image and
    its patient metadata ``record``, as the prediction was."""
    method, target = settings.explain_method, result["predicted_class"]
    job = batcher.run(explaining.explain, loaded.model, image, method, target, record)
    return await _run(asyncio.wait_for(job, settings.limits.request_timeout_s))


def _limits_card(limits: Limits) -> dict[str, Any]:
    return {
        "max_upload_bytes": limits.max_upload_bytes,
        "max_pixels": limits.max_pixels,
        "content_types": list(limits.content_types),
        "request_timeout_s": limits.request_timeout_s,
    }


def _add_error_handlers(app: FastAPI) -> None:
    """Every error as ``{"error": "..."}`` with its status; the server keeps running."""

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    @app.exception_handler(RequestError)
    async def request_error(_: Request, exc: RequestError) -> JSONResponse:
        return error(exc.status, exc.message)

    @app.exception_handler(UserError)
    async def user_error(_: Request, exc: UserError) -> JSONResponse:
        return error(422, str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body')}: {e.get('msg')}"
            for e in exc.errors()
        ]
        return error(422, "invalid request: " + "; ".join(problems))

    @app.exception_handler(Exception)
    async def internal_error(_: Request, exc: Exception) -> JSONResponse:
        log.exception("request failed")
        return error(500, f"internal error: {type(exc).__name__}")
