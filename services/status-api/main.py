"""status-api: answers what happened to a batch and manages it."""

import flask
import functions_framework

from sluice import logs, routes

logs.configure()


@functions_framework.http
def status_api(request: flask.Request) -> flask.Response:
    return routes.status(request)
