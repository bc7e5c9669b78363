"""VisionaryAI: an AI image gallery as an Azure Functions app (Python v2 model).

Four HTTP triggers under /api. Each is a thin adapter: read the request, call
`visionary`, shape the answer. The logic lives in the package.
"""

import azure.functions as func

from visionary import clients
from visionary.endpoints import endpoint, json_body, json_response, page_params, text_response
from visionary.generation import Deadline, ImageRequest, generate_image
from visionary.guards import check_key
from visionary.settings import auth_level
from visionary.text import shortened

app = func.FunctionApp(http_auth_level=auth_level())


@app.route(route="generateImage", methods=["POST"])
@endpoint
async def generateImage(req: func.HttpRequest) -> func.HttpResponse:
    current = clients.current()
    settings = current.settings.require("generation")
    deadline = Deadline.after(settings.require_request_deadline())
    request = ImageRequest.from_body(
        json_body(req, settings.max_body_bytes), settings.max_prompt_chars, settings.require_models()
    )
    key = check_key(req.headers.get("Idempotency-Key"))
    created = await generate_image(request, current.images, current.gallery, current.guards, key, deadline)
    return json_response(created.to_json(), status=201)


@app.route(route="getImages", methods=["GET"])
@endpoint
async def getImages(req: func.HttpRequest) -> func.HttpResponse:
    current = clients.current()
    limit, cursor = page_params(req.params, current.settings.require("gallery").page_size)
    page = await current.gallery.page(limit, cursor)
    return json_response(page.to_json())


@app.route(route="getChatGPTSuggestion", methods=["GET"])
@endpoint
async def getChatGPTSuggestion(req: func.HttpRequest) -> func.HttpResponse:
    current = clients.current()
    suggestion = await current.suggestions.suggest()
    return text_response(shortened(suggestion, current.settings.max_prompt_chars))


@app.route(route="sasToken", methods=["GET"])
@endpoint
async def sasToken(req: func.HttpRequest) -> func.HttpResponse:
    sas = await clients.current().gallery.sign()
    return json_response(sas.to_json())
