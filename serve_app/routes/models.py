"""`GET /v1/models` and `GET /v1/models/{model_id}`: the models this server runs, in OpenAI's
shape, so that clients that list models first (Open WebUI, most SDK front-ends) find them.

A model is listed when its module is enabled, ready, and allowed to the request's API key
(`ApiKey.modules`); any valid key may list. Ids (`serve_app/served_models.py`) are the
configured model references, e.g. `stabilityai/sd-turbo`, `ViT-B-32`, `F5TTS_v1_Base`; an
id may hold `/`, hence the path converter. An id that is not listed is 404
`model_not_found` in the project's error shape.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request

from serve_app.access import request_key
from serve_app.openai_schemas import ModelList, ModelObject
from serve_app.schemas import ERROR_RESPONSES, ErrorResponse
from serve_app.served_models import (
    MODEL_SOURCES,
    ModelCatalog,
    ModelNotFound,
    ModelSource,
    ServedModel,
)
from serve_app.services import Services, get_services

router = APIRouter(prefix="/v1", tags=["openai-compatible"], responses=ERROR_RESPONSES)
ServicesDep = Annotated[Services, Depends(get_services)]


def model_catalog(request: Request) -> ModelCatalog:
    """FastAPI dependency: this Gateway replica's catalog of served models."""
    catalog: ModelCatalog | None = getattr(request.app.state, "model_catalog", None)
    if catalog is None:
        catalog = request.app.state.model_catalog = ModelCatalog(get_services(request))
    return catalog


CatalogDep = Annotated[ModelCatalog, Depends(model_catalog)]


def visible_sources(request: Request, services: Services) -> list[ModelSource]:
    """The model sources of the enabled modules the request's key may use."""
    key = request_key(request)
    return [
        source
        for source in MODEL_SOURCES
        if services.config.enabled.get(source.module.name, False)
        and (key is None or key.allows_module(source.module.name))
    ]


def model_object(model: ServedModel) -> ModelObject:
    return ModelObject(
        id=model.id,
        created=model.created,
        owned_by=model.owned_by,
        module=model.module,
        endpoints=list(model.endpoints),
        dimensions=model.dimensions,
    )


@router.get("/models", response_model=ModelList, response_model_exclude_none=True)
async def list_models(request: Request, services: ServicesDep, catalog: CatalogDep) -> ModelList:
    """The models of the enabled modules that are ready (a loading module's model is listed
    once it is), limited to the modules the API key may use."""
    models, _ = await catalog.listed(visible_sources(request, services))
    return ModelList(data=[model_object(model) for model in models])


@router.get(
    "/models/{model_id:path}",
    response_model=ModelObject,
    response_model_exclude_none=True,
    responses={404: {"model": ErrorResponse, "description": "No listed model has this id"}},
)
async def retrieve_model(
    model_id: str, request: Request, services: ServicesDep, catalog: CatalogDep
) -> ModelObject:
    """One listed model; ids may contain '/' (`stabilityai/sd-turbo`)."""
    models, missing = await catalog.listed(visible_sources(request, services))
    for model in models:
        if model.id == model_id:
            return model_object(model)
    note = f" (not listed until ready: the models of {', '.join(missing)})" if missing else ""
    raise ModelNotFound(
        f"no model '{model_id[:256]}' is served here (GET /v1/models lists them){note}",
        model=model_id[:256],
        available=[model.id for model in models],
    )
