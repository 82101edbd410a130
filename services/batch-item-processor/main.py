"""batch-item-processor: one Pub/Sub push delivery at a time, from any of its subscriptions.

Each delivery goes to the handler of the subscription it came through (see sluice.push): an
acknowledgement, a nack for a delivery to come again, or a deferred one published again.
"""

import flask
import functions_framework

from sluice import bootstrap, logs

logs.configure()

# A subscription with no handler, or a handler with no subscription, stops it here, at start.
bootstrap.check_batch_item_processor()

# Built on the first delivery, once per process, and shared by its threads.
endpoint = bootstrap.Once(bootstrap.batch_item_processor)


@functions_framework.http
def batch_item_processor(request: flask.Request) -> flask.Response:
    return endpoint()(request)
