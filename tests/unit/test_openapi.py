"""The OpenAPI document: valid, complete, and made from the models the handlers validate with."""

from __future__ import annotations

from openapi_spec_validator import validate

from modelserver.catalogue import Catalogue
from modelserver.kinds.crystal import CrystalRequest
from modelserver.launcher.pages.assembly import api_documents
from modelserver.openapi import build_openapi


def test_the_document_is_valid_openapi() -> None:
    validate(build_openapi(Catalogue.load()))


def test_every_public_route_and_model_is_documented() -> None:
    catalogue = Catalogue.load()
    paths = build_openapi(catalogue)["paths"]
    assert {
        "/healthcheck",
        *catalogue.routes,
        *(f"/predictions/{name}" for name in catalogue.models),
    } <= set(paths)
    assert "/metrics" not in paths, "Prometheus text is on METRICS_PORT, not on the API's port"
    astromech = paths["/astromech"]["post"]
    assert {"200", "400", "413", "422", "500", "503"} <= set(astromech["responses"])
    assert set(paths["/prediction"]["post"]["responses"]) >= {"200", "405"}
    assert "application/x-ndjson" in paths["/inference"]["post"]["responses"]["200"]["content"]


def test_schemas_come_from_the_request_models() -> None:
    schemas = build_openapi(Catalogue.load())["components"]["schemas"]
    assert (
        schemas["CrystalRequest"]["properties"]["crystalData"]
        == CrystalRequest.model_json_schema()["properties"]["crystalData"]
    )
    assert schemas["CrystalRequest"]["additionalProperties"] is False
    assert schemas["TopicsAnswer"]["properties"]["label"]["type"] == "string"


def test_the_docs_page_needs_nothing_from_outside() -> None:
    page = api_documents(Catalogue.load())["/docs"][1].decode()
    assert "/openapi.json" in page
    assert "http://" not in page and "https://" not in page  # Swagger UI's files: test_docs_pages.py


def test_the_committed_http_samples_are_generated_from_the_document() -> None:
    from modelserver.tools.api_samples import DEFAULT_OUT, http_samples  # pylint: disable=import-outside-toplevel

    expected = http_samples(build_openapi(Catalogue.load()), "http://localhost:3000")
    assert DEFAULT_OUT.read_text(encoding="utf-8") == expected, "run: python -m modelserver api-samples"
    # Every POST operation, and the same fill-mask request in the Hugging Face shape.
    assert expected.count("\nPOST ") == 1 + sum(
        1 for item in build_openapi(Catalogue.load())["paths"].values() if "post" in item
    )
    assert '{"inputs": "Hello' in expected
    assert "InferenceClient(model=" in expected and "tritonclient" in expected
