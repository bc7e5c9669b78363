"""VisionaryAI: an AI image gallery as an Azure Functions app (Python v2 model).

Four HTTP triggers under /api. Each is a thin adapter: read the request, call
`visionary`, shape the answer. The logic lives in the package.
"""

import azure.functions as func

from visionary import clients
from visionary.endpoints import endpoint, json_response, page_params
from visionary.errors import ApiError
from visionary.settings import auth_level

app = func.FunctionApp(http_auth_level=auth_level())


@app.route(route="generateImage", methods=["POST"])
@endpoint
async def generateImage(req: func.HttpRequest) -> func.HttpResponse:
    raise ApiError.not_configured("Image generation is not configured yet.")


@app.route(route="getImages", methods=["GET"])
@endpoint
async def getImages(req: func.HttpRequest) -> func.HttpResponse:
    current = clients.current()
    limit, cursor = page_params(req.params, current.settings.page_size)
    page = await current.gallery.page(limit, cursor)
    return json_response(page.to_json())


@app.route(route="getChatGPTSuggestion", methods=["GET"])
@endpoint
async def getChatGPTSuggestion(req: func.HttpRequest) -> func.HttpResponse:
    raise ApiError.not_configured("Prompt suggestions are not configured yet.")


@app.route(route="sasToken", methods=["GET"])
@endpoint
async def sasToken(req: func.HttpRequest) -> func.HttpResponse:
    sas = await clients.current().gallery.signer.sign()
    return json_response(sas.to_json())
