"""webhook-ingest: accepts work over HTTP and answers as soon as it is durable."""

import flask
import functions_framework

from sluice import bootstrap, logs

logs.configure()

# Built on the first request, once per process, and shared by its threads.
router = bootstrap.Once(bootstrap.webhook_ingest)


@functions_framework.http
def webhook_ingest(request: flask.Request) -> flask.Response:
    return router()(request)
