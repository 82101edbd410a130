"""The baseline Sluice replaces: webhooks that do the work inside the request.

- `POST /whatsapp`: the same signature check, parsing, AI call and Graph send as Sluice, but
  inline: Meta waits for all of it before it gets its 200.
- `POST /batches`: a CRM batch whose items are each sent to the AI provider before the answer,
  as many at once as the provider's declared concurrency allows.

Served by functions-framework like the real functions, for `make bench` only.
"""

from concurrent.futures import ThreadPoolExecutor

import flask
import functions_framework

from sluice import bootstrap
from sluice.domain.batches import BatchIn
from sluice.domain.errors import Invalid, Unauthenticated
from sluice.domain.whatsapp import check_signature, events_of, message_text
from sluice.http import problem_response, read_json
from sluice.problems import Problem, from_refusal

# The same adapters as the functions, built the same way, once per process.
root = bootstrap.Once(lambda: bootstrap.Root(bootstrap.settings()))


@functions_framework.http
def inline(request: flask.Request) -> flask.Response:
    if request.path == "/batches":
        return batch(request)
    return whatsapp(request)


def whatsapp(request: flask.Request) -> flask.Response:
    secret = root().settings.required("whatsapp_app_secret")
    body = request.get_data()
    try:
        check_signature(body, request.headers.get("X-Hub-Signature-256"), secret)
        events = events_of(read_json(body))
    except Problem as problem:
        return problem_response(problem)
    except (Invalid, Unauthenticated) as refusal:
        return problem_response(from_refusal(refusal))
    for event in events:
        if event.kind == "message":
            answer = root().ai().chat(one_call(message_text(event.body)))["content"]
            root().whatsapp_api().send_text(event.phone_number_id, event.body["from"], answer)
    return flask.Response("ok", 200)


def one_call(item_input: object) -> list[dict[str, object]]:
    """What the default kind's one call sends for an item (the inline design's only work)."""
    topology = root().settings.topology
    return topology.kinds[topology.default_kind].plan().steps[0].template.render(item_input, {})


def batch(request: flask.Request) -> flask.Response:
    submitted = BatchIn.model_validate(read_json(request.get_data()))
    at_once = root().settings.topology.providers["ai"].max_concurrent
    with ThreadPoolExecutor(at_once) as pool:
        results = list(pool.map(lambda item: root().ai().chat(one_call(item.input)),
                                submitted.items))  # fmt: skip
    return flask.jsonify({"state": "completed", "total": len(results)})
