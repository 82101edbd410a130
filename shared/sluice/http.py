"""The HTTP side of the HTTP functions: routing, JSON and problem responses, body limits.

Routing uses werkzeug's, which functions-framework already brings. A `Problem` becomes its
`application/problem+json`; Pub/Sub or Firestore being unreachable becomes a 503, so the caller
retries: nothing was accepted. So does an outcome that says "not now" (`Redeliver`, `Defer`: an
outside service busy or down), with its Retry-After; `Fail` (an outside service refused for good)
is a 502. Anything else is a bug and is left to become a 500, and so is a
request Google refused as such (invalid argument, permission, a missing topic): retrying would
not change the answer, and whatever a caller can get wrong is validated before it gets there.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import flask
from google.api_core.exceptions import (
    BadRequest,
    Forbidden,
    GoogleAPICallError,
    RetryError,
    Unauthorized,
)
from google.api_core.exceptions import (
    MethodNotAllowed as GoogleMethodNotAllowed,
)
from google.api_core.exceptions import (
    NotFound as GoogleNotFound,
)
from werkzeug.exceptions import MethodNotAllowed, NotFound
from werkzeug.routing import Map, Rule

from sluice.domain.errors import Invalid, Refused, Unauthenticated
from sluice.outcomes import Fail, NotDone
from sluice.problems import Problem, from_refusal, unavailable

log = logging.getLogger(__name__)

Handler = Callable[..., flask.Response]

# What a caller is told to wait when an outside service is busy and did not say for how long.
RETRY_AFTER_SECONDS = 10

# Google's answers that say the request itself was wrong, or was not allowed: not an outage.
REFUSED_AS_SENT = (BadRequest, Unauthorized, Forbidden, GoogleNotFound, GoogleMethodNotAllowed)


def json_response(
    body: Any, status: int = 200, headers: dict[str, str] | None = None
) -> flask.Response:
    return flask.Response(
        json.dumps(body, default=str),
        status=status,
        headers=headers,
        mimetype="application/json",
    )


def problem_response(problem: Problem) -> flask.Response:
    return flask.Response(
        json.dumps(problem.body()),
        status=problem.status,
        headers=problem.headers,
        mimetype="application/problem+json",
    )


def read_body(request: flask.Request, max_bytes: int) -> bytes:
    """The raw body, or a 413 before reading more than the limit."""
    declared = request.content_length
    if declared is not None and declared > max_bytes:
        raise Problem(413, "Content Too Large", f"the body is over {max_bytes} bytes")
    body = request.stream.read(max_bytes + 1)
    if len(body) > max_bytes:
        raise Problem(413, "Content Too Large", f"the body is over {max_bytes} bytes")
    return body


def read_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise Problem(400, "Invalid JSON", "the body is not a JSON document") from None
    except RecursionError:
        # Python's parser gives up near a thousand levels; Firestore stores no more than 20.
        raise Problem(400, "Invalid JSON", "the body is nested too deeply") from None


class Router:
    def __init__(self, routes: dict[tuple[str, str], Handler]) -> None:
        self._handlers: dict[str, Handler] = {}
        rules = []
        for (method, path), handler in routes.items():
            endpoint = f"{method} {path}"
            self._handlers[endpoint] = handler
            rules.append(Rule(path, endpoint=endpoint, methods=[method]))
        self._map = Map(rules, strict_slashes=False)

    def __call__(self, request: flask.Request) -> flask.Response:
        try:
            endpoint, args = self._map.bind_to_environ(request.environ).match()
            return self._handlers[endpoint](request, **args)
        except NotFound:
            return problem_response(Problem(404, "Not Found", f"no route for {request.path}"))
        except MethodNotAllowed as exc:
            allowed = ", ".join(sorted(exc.valid_methods or []))
            return problem_response(Problem(405, "Method Not Allowed", headers={"Allow": allowed}))
        except Problem as problem:
            return problem_response(problem)
        except (Invalid, Unauthenticated, Refused) as refusal:
            return problem_response(from_refusal(refusal))
        except Fail as failed:
            return problem_response(Problem(502, "Upstream refused", failed.reason))
        except NotDone as later:
            retry = str(max(1, round(later.retry_after or RETRY_AFTER_SECONDS)))
            return problem_response(
                Problem(503, "Try again later", later.reason, headers={"Retry-After": retry})
            )
        except REFUSED_AS_SENT:
            raise  # a 500, logged with its trace by the framework
        except (GoogleAPICallError, RetryError, TimeoutError) as exc:
            log.warning("backing service unavailable: %s", exc)
            return problem_response(unavailable("a backing service is unavailable; retry"))
