"""status-api: answers what happened to a batch and manages it."""

import flask
import functions_framework

from sluice import bootstrap, logs

logs.configure()

# Built on the first request, once per process, and shared by its threads.
router = bootstrap.Once(bootstrap.status_api)


@functions_framework.http
def status_api(request: flask.Request) -> flask.Response:
    return router()(request)
