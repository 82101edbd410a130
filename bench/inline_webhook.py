"""The baseline Sluice replaces: a WhatsApp webhook that does the work inside the request.

The same signature check, parsing, AI call and Graph send as Sluice, but inline: Meta waits for
all of it before it gets its 200. Served by functions-framework like the real functions, for
`make bench` only.
"""

import flask
import functions_framework

from sluice import wiring
from sluice.domain.whatsapp import check_signature, events_of, message_text
from sluice.http import problem_response, read_json
from sluice.problems import Problem


@functions_framework.http
def inline_webhook(request: flask.Request) -> flask.Response:
    secret = wiring.settings().required("whatsapp_app_secret")
    body = request.get_data()
    try:
        check_signature(body, request.headers.get("X-Hub-Signature-256"), secret)
        events = events_of(read_json(body))
    except Problem as problem:
        return problem_response(problem)
    for event in events:
        if event.kind == "message":
            answer = wiring.ai_provider().complete(message_text(event.body))["content"]
            wiring.whatsapp_api().send_text(event.phone_number_id, event.body["from"], answer)
    return flask.Response("ok", 200)
