"""webhook-ingest: accepts work over HTTP and answers as soon as it is durable."""

import flask
import functions_framework

from sluice import logs, routes

logs.configure()


@functions_framework.http
def webhook_ingest(request: flask.Request) -> flask.Response:
    return routes.ingest(request)
