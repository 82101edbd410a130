"""The typed view of `topology.yaml`: topics, subscriptions, triggers, limits.

Functions, the local cloud and the tests read the topology only through `load_topology`; Terraform
reads the same file with `yamldecode`. A mistake in the file fails here, loudly, at start-up.
"""

from __future__ import annotations

import math
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from sluice.domain import pipelines, templates
from sluice.domain.batches import ID_PATTERN
from sluice.messages import BATCH_EVENTS, JOB_POLLS, WHATSAPP_EVENTS, WORK_ITEMS

_HERE = Path(__file__).resolve()
# In the repository the file is at its root; in a function's deployed archive (`make package`), it
# lies beside the package.
_PLACES = (_HERE.parents[2] / "topology.yaml", _HERE.parents[1] / "topology.yaml")
REPO_TOPOLOGY = next((p for p in _PLACES if p.is_file()), _PLACES[0])


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FunctionLimits(_Strict):
    max_instances: int = Field(ge=1)
    concurrency: int = Field(ge=1, le=1000)
    timeout_seconds: int = Field(ge=1, le=3600)
    memory: str


class Function(_Strict):
    entry_point: str
    trigger: Literal["http", "pubsub", "firestore"]
    public: bool = False
    limits: FunctionLimits
    local_instances: int = Field(default=1, ge=1, le=8)
    # The topics it publishes to: in the cloud its service account may publish to these only.
    publishes: list[str] = Field(default_factory=list)
    # Settings it cannot start without (SLUICE_<NAME>); Terraform passes each one, from Secret
    # Manager when it is a secret, and no others.
    needs: list[str] = Field(default_factory=list)
    # Settings it reads when given and defaults otherwise (the AI model, the Graph API's version):
    # Terraform passes each one too, so that a value set for the deployment reaches it. Never a
    # secret: a secret is a need.
    uses: list[str] = Field(default_factory=list)

    @property
    def signature_type(self) -> str:
        # Pub/Sub push is an HTTP request whose envelope the function decodes itself (see
        # sluice.push); Eventarc's Firestore events are CloudEvents.
        return "cloudevent" if self.trigger == "firestore" else "http"


class Topic(_Strict):
    # Where a message goes after its subscription's max_delivery_attempts; None for a topic whose
    # messages are simply delivered again (the sweeps: a lost one is replaced by the next).
    dead_letter: str | None = None


class RetryPolicy(_Strict):
    minimum_backoff_seconds: int = Field(ge=0, le=600)
    maximum_backoff_seconds: int = Field(ge=0, le=600)


class Subscription(_Strict):
    topic: str
    push_to: str
    ack_deadline_seconds: int = Field(ge=10, le=600)
    retry: RetryPolicy
    # After this many deliveries a message goes to its topic's dead-letter topic, or to the
    # parking lot for a topic that has none.
    max_delivery_attempts: int = Field(ge=5, le=100)
    ordering: bool = False


class Schedule(_Strict):
    """Cloud Scheduler publishing to a topic (in the cloud: a cron of whole minutes)."""

    topic: str
    every_seconds: int = Field(ge=1, le=86400)
    # The JSON body of each message it publishes.
    message: dict[str, Any] = Field(default_factory=dict)


class FirestoreTrigger(_Strict):
    function: str
    event_type: str
    document: str


class Endpoint(_Strict):
    """Where a kind's steps reach a provider: the settings that hold its base URL and its API
    key (each a need of the processor; the key a secret)."""

    url: str
    api_key: str | None = None


class Provider(_Strict):
    requests_per_minute: int = Field(ge=1)
    max_concurrent: int = Field(ge=1)
    timeout_seconds: float = Field(gt=0)
    # The most concurrent calls one tenant may hold, so that its slow or dead endpoint leaves
    # slots to the other tenants (at most max_concurrent; none: no cap).
    tenant_max_concurrent: int | None = Field(default=None, ge=1)
    # The share of max_concurrent the WhatsApp replies of one business number may hold (at
    # least one slot), so that a flood of messages on one number leaves slots to batches and to
    # other numbers; none: no cap. A share, so it keeps its meaning when max_concurrent changes.
    # One user's messages hold one at most: a conversation's events are delivered one at a time.
    number_max_share: float | None = Field(default=None, gt=0, lt=1)
    # Set for a provider a kind's steps call (see Step).
    endpoint: Endpoint | None = None

    @property
    def number_max_concurrent(self) -> int | None:
        if self.number_max_share is None:
            return None
        return max(1, math.floor(self.max_concurrent * self.number_max_share))


# The kind of every WhatsApp message's work (its day's job's kind): its last step replies.
WHATSAPP_KIND = "whatsapp"

# The providers Sluice's own adapters call (a reply's model, WhatsApp's sends, the CRMs'
# callbacks, Sheets' writes): topology.yaml must declare each; a kind's steps may call any other.
BUILT_IN_PROVIDERS = ("ai", "whatsapp", "callbacks", "sheets")
ProviderName = str


class Work(_Strict):
    max_attempts: int = Field(ge=1)
    lease_seconds: int = Field(ge=1)
    counter_shards: int = Field(ge=1, le=100)
    rate_shards: int = Field(ge=1, le=100)
    recovery_seconds: float = Field(gt=0)
    capacity_wait_seconds: float = Field(ge=0)
    # The sweeper republishes the queued items of a batch that made no progress for this long.
    stall_seconds: float = Field(gt=0)
    # What a delivery's own Firestore and Pub/Sub round trips may take besides its provider calls
    # and waits: counted in the lease and ack deadline checks below.
    bookkeeping_seconds: float = Field(ge=0)
    # What the processor keeps of the jobs it has seen (their tenant, kind and params), in JSON
    # bytes of params: beyond it, the least recently used job is read again when next needed.
    job_cache_bytes: int = Field(ge=0)


class Api(_Strict):
    max_batch_items: int = Field(ge=1)
    max_body_bytes: int = Field(ge=1024)
    max_whatsapp_body_bytes: int = Field(ge=1024)
    # A JSON value takes up to 4 times its bytes in Firestore (a number is 8 bytes), and an item
    # or job document holds at most 1 MiB, with more than the input or the params in it.
    max_item_input_bytes: int = Field(ge=1, le=200 * 1024)
    max_params_bytes: int = Field(ge=1, le=200 * 1024)
    default_page_size: int = Field(ge=1)
    max_page_size: int = Field(ge=1)
    publish_timeout_seconds: float = Field(gt=0, le=60)
    intake_lease_seconds: int = Field(ge=5, le=600)
    intake_retry_after_seconds: int = Field(ge=1, le=60)
    intake_abandon_seconds: int = Field(ge=60)
    health_timeout_seconds: float = Field(gt=0, le=30)
    health_cache_seconds: float = Field(ge=0, le=300)


class Exports(_Strict):
    """The Sheets export: how many rows one write call carries (the backfill's chunk, the writer's
    largest flush), how long a writer or backfill owns its lease, and how long one backfill
    invocation runs before it hands over to the next (an event function runs at most 9 minutes)."""

    sheet_title: str = Field(min_length=1, max_length=100)
    rows_per_call: int = Field(ge=1, le=500)
    lease_seconds: int = Field(ge=5)
    capacity_wait_seconds: float = Field(ge=0)
    configure_wait_seconds: float = Field(ge=0)
    backfill_budget_seconds: int = Field(ge=1)
    # The promise: every result is in the sheet this long after its batch's end, even when a
    # writer or backfill dies, as long as the write quota has room.
    complete_within_seconds: int = Field(ge=1)
    # How long after a delivery dies its event is delivered again (Eventarc's first retry; the
    # local router's longest backoff). The redelivery takes the dead delivery's lease over.
    redelivery_seconds: float = Field(gt=0, le=600)


class ParkingLot(_Strict):
    """Where a message goes that kept failing on a topic with no dead-letter topic of its own (the
    sweeps, the dead-letter topics themselves): nobody consumes it; a pull subscription keeps it
    for inspection, and an alert fires while it holds anything."""

    topic: str
    subscription: str
    retention_days: int = Field(ge=1, le=7)


class Retention(_Strict):
    """How long records kept only to recognise a repeat live (Firestore TTL deletes them after)."""

    whatsapp_message_days: int = Field(ge=8)  # Meta re-delivers a webhook for up to 7 days


# What a batch's `kind` may be (sluice.domain.batches' names: letters, digits, `.`, `_`, `-`).
KindName = Annotated[str, Field(pattern=ID_PATTERN)]
# A step's name: what its templates read it as (`steps.<name>`) and its counts' field.
StepName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")]


def compiles(template: Any, whose: str) -> None:
    """Raise, naming `whose` template it is, if a template (or a JSON value of them) does not
    compile: a syntax error stops the topology loading, not the first item."""
    wrong = templates.check(template)
    if wrong:
        raise ValueError(f"{whose} template does not compile: {wrong}")


class StepMessage(_Strict):
    role: Literal["system", "user", "assistant"]
    # A template, or content parts whose strings are templates (sluice.domain.templates).
    content: str | list[dict[str, Any]]

    @model_validator(mode="after")
    def _compiles(self) -> StepMessage:
        compiles(self.content, f"the {self.role} message's")
        return self


class StepRequest(_Strict):
    """A JSON request to a path of the provider's endpoint; each string in `body` a template."""

    method: Literal["POST", "PUT", "PATCH"] = "POST"
    path: str = Field(pattern=r"^/[^\s]*$")
    body: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _compiles(self) -> StepRequest:
        compiles(self.body, "the request body's")
        return self


class RemoteJob(_Strict):
    """A job the provider runs itself: `start` creates it and answers its id (`id_field`), then
    `status_path` (with `{id}`) is polled, no more often than every `poll_seconds`, until its
    `status_field` is one of `succeeded` (the answer is the step's output) or `failed`. The
    provider's max_concurrent counts jobs from their start to their final status, for at most
    `timeout_seconds` each: past it the step fails."""

    start: StepRequest
    id_field: str = "id"
    status_path: str = Field(pattern=r"^/[^\s]*\{id\}[^\s]*$")
    status_field: str = "status"
    succeeded: list[str] = Field(min_length=1)
    failed: list[str] = Field(min_length=1)
    poll_seconds: float = Field(ge=1, le=600)
    timeout_seconds: float = Field(gt=0, le=86400)


class Step(_Strict):
    """One call of a kind's work: to which provider, of which shape, sending what."""

    # A key of `providers` with an endpoint.
    provider: str
    # `chat`: an OpenAI-compatible chat completion of `messages`; `http`: `request`, whose JSON
    # answer is the output; `remote_job`: `job`, started then polled until final;
    # `whatsapp_reply`: `text` sent back to the WhatsApp user whose message the item is (the
    # whatsapp kind's last step, on the whatsapp provider, never repeated).
    call: Literal["chat", "http", "remote_job", "whatsapp_reply"]
    # The model asked for, for a chat step (default: the batch's params.model, then the
    # deployment's ai_model).
    model: str | None = None
    messages: list[StepMessage] | None = None
    request: StepRequest | None = None
    job: RemoteJob | None = None
    text: str | None = None
    # False for a call that must not happen twice (a message sent): one whose outcome a crash
    # left unknown fails its item, saying so, rather than being made again.
    repeatable: bool = True
    # The steps whose outputs this one needs (`steps.<name>` in its templates); it starts once
    # they have all succeeded.
    after: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _says_what_it_sends(self) -> Step:
        given = {"chat": self.messages, "http": self.request, "remote_job": self.job,
                 "whatsapp_reply": self.text}  # fmt: skip
        field = {"chat": "messages", "http": "request", "remote_job": "job",
                 "whatsapp_reply": "text"}  # fmt: skip
        if not given[self.call]:
            raise ValueError(f"a step of `call: {self.call}` needs `{field[self.call]}`")
        extra = [field[c] for c, v in given.items() if c != self.call and v is not None]
        if extra:
            raise ValueError(f"a step of `call: {self.call}` sends no {', '.join(extra)}")
        if self.call == "whatsapp_reply" and (self.provider != "whatsapp" or self.repeatable):
            raise ValueError("a whatsapp_reply step calls provider whatsapp, and is not "
                             "repeatable (a message sent twice is two messages)")  # fmt: skip
        if self.text is not None:
            compiles(self.text, "the text's")
        return self

    def planned(self, name: str) -> pipelines.PlannedStep:
        template: templates.ChatTemplate | templates.RequestTemplate
        if self.messages is not None:
            template = templates.ChatTemplate(
                [templates.ChatMessage(m.role, m.content) for m in self.messages]
            )
        elif self.text is not None:
            template = templates.RequestTemplate(self.text)
        else:
            request = self.request or (self.job.start if self.job else None)
            assert request is not None
            template = templates.RequestTemplate(request.body)
        return pipelines.PlannedStep(
            name, tuple(self.after), template, provider=self.provider, call=self.call,
            model=self.model, repeatable=self.repeatable, request=self.request, job=self.job,
        )  # fmt: skip


class Kind(_Strict):
    """A kind of batch work a CRM may submit (`kind` in `POST /v1/batches`)."""

    description: str = Field(min_length=1)
    # The kind of a batch that names none; exactly one kind is.
    default: bool = False
    steps: dict[StepName, Step] = Field(min_length=1)

    def plan(self) -> pipelines.Plan:
        order = pipelines.in_order({name: step.after for name, step in self.steps.items()})
        return pipelines.Plan(tuple(self.steps[name].planned(name) for name in order))

    def step_problems(self) -> list[str]:
        needs = {name: step.after for name, step in self.steps.items()}
        problems = [f"step {name} comes after {a!r}, which is not one of its steps"
                    for name, after in needs.items() for a in after if a not in needs]  # fmt: skip
        if problems:
            return problems
        if len(pipelines.in_order(needs)) < len(needs):
            return ["its steps come after each other in a cycle"]
        finals = sorted(set(needs) - {a for after in needs.values() for a in after})
        if len(finals) != 1:
            return [f"its steps must end in one step, whose output is the result, not {finals}"]
        return []


class Topology(_Strict):
    functions: dict[str, Function]
    # The settings that are secrets: Secret Manager in the cloud, never shown by the settings.
    secrets: list[str] = Field(default_factory=list)
    topics: dict[str, Topic]
    subscriptions: dict[str, Subscription]
    firestore_triggers: dict[str, FirestoreTrigger]
    schedules: dict[str, Schedule] = Field(default_factory=dict)
    # Outside services and their limits, by name: the built-in ones and those kinds' steps call.
    providers: dict[KindName, Provider]
    work: Work
    api: Api
    exports: Exports
    retention: Retention
    parking_lot: ParkingLot
    kinds: dict[KindName, Kind] = Field(min_length=1)

    @property
    def default_kind(self) -> str:
        return next(name for name, kind in self.kinds.items() if kind.default)

    @model_validator(mode="after")
    def _references_resolve(self) -> Topology:
        problems = []
        defaults = sorted(name for name, kind in self.kinds.items() if kind.default)
        if len(defaults) != 1:
            problems.append(f"kinds: exactly one must be the default, not {defaults or 'none'}")
        problems += [f"kinds.{name}: {p}" for name, kind in self.kinds.items()
                     for p in kind.step_problems()]  # fmt: skip
        dead_letters = {t.dead_letter for t in self.topics.values() if t.dead_letter}
        for name, sub in self.subscriptions.items():
            if sub.topic not in self.topics and sub.topic not in dead_letters:
                problems.append(f"subscription {name}: unknown topic {sub.topic!r}")
            if self.functions.get(sub.push_to, None) is None:
                problems.append(f"subscription {name}: unknown function {sub.push_to!r}")
            elif self.functions[sub.push_to].trigger != "pubsub":
                problems.append(f"subscription {name}: {sub.push_to} is not a pubsub function")
            if sub.retry.minimum_backoff_seconds > sub.retry.maximum_backoff_seconds:
                problems.append(f"subscription {name}: minimum backoff exceeds maximum")
        for name, function in self.functions.items():
            problems += [
                f"function {name}: publishes to unknown topic {t!r}"
                for t in function.publishes
                if t not in self.topics
            ]
        problems += self._setting_problems()
        for name, trig in self.firestore_triggers.items():
            fn = self.functions.get(trig.function)
            if fn is None or fn.trigger != "firestore":
                problems.append(f"trigger {name}: {trig.function!r} is not a firestore function")
        problems += self._provider_problems()
        problems += self._whatsapp_kind_problems()
        for name, provider in self.providers.items():
            cap = provider.tenant_max_concurrent
            if cap is not None and cap >= provider.max_concurrent:
                problems.append(
                    f"providers.{name}.tenant_max_concurrent ({cap}) must be below its "
                    f"max_concurrent ({provider.max_concurrent}), or one tenant can hold every slot"
                )
        for name, schedule in self.schedules.items():
            if schedule.topic not in self.topics:
                problems.append(f"schedule {name}: unknown topic {schedule.topic!r}")
        if problems:
            raise ValueError("; ".join(problems))
        call = self.exports.capacity_wait_seconds + self.providers["sheets"].timeout_seconds
        if self.exports.lease_seconds <= call:
            problems.append(
                "exports: lease_seconds must exceed capacity_wait_seconds plus the sheets "
                "provider's timeout_seconds, or a live writer loses its lease while it waits"
            )
        backfill = self.functions.get("backfill")
        if backfill and self.exports.backfill_budget_seconds >= backfill.limits.timeout_seconds:
            problems.append("exports: backfill_budget_seconds must be below backfill's timeout")
        problems += self._export_deadline_problems()
        problems += self._budget_problems()
        if self.api.default_page_size > self.api.max_page_size:
            problems.append(
                f"api.default_page_size ({self.api.default_page_size}) must not exceed "
                f"api.max_page_size ({self.api.max_page_size})"
            )
        if self.api.intake_abandon_seconds <= self.api.intake_lease_seconds:
            problems.append(
                f"api.intake_abandon_seconds ({self.api.intake_abandon_seconds}) must exceed "
                f"api.intake_lease_seconds ({self.api.intake_lease_seconds}), or the sweeper "
                "abandons intakes their owners are still writing"
            )
        if dead_letters & set(self.topics):
            problems.append("a dead-letter topic is also declared as a work topic")
        if self.parking_lot.topic in dead_letters | set(self.topics):
            problems.append("the parking lot's topic must be a topic of its own")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def _provider_problems(self) -> list[str]:
        """The built-in providers are declared; each step's provider is declared, with an endpoint
        whose settings the processor needs (its key a secret); a provider of remote jobs takes
        nothing else (its max_concurrent counts jobs), and its rate leaves room for the polls."""
        problems = [f"providers: {name!r} must be declared (Sluice's own adapters call it)"
                    for name in BUILT_IN_PROVIDERS if name not in self.providers]  # fmt: skip
        processor = self.functions.get("batch-item-processor")
        needs = set(processor.needs) if processor else set()
        publishes = set(processor.publishes) if processor else set()
        calls: dict[str, set[str]] = {}
        polls: dict[str, float] = {}
        for kind_name, kind in self.kinds.items():
            for step_name, step in kind.steps.items():
                where = f"kinds.{kind_name}.steps.{step_name}"
                provider = self.providers.get(step.provider)
                if step.call == "whatsapp_reply":
                    if kind_name != WHATSAPP_KIND:
                        problems.append(f"{where}: only the {WHATSAPP_KIND} kind replies on "
                                        "WhatsApp")  # fmt: skip
                    continue
                if provider is None or provider.endpoint is None:
                    problems.append(f"{where}: provider {step.provider!r} is not declared with an "
                                    "endpoint")  # fmt: skip
                    continue
                calls.setdefault(step.provider, set()).add(step.call)
                if step.job is not None:
                    polls[step.provider] = min(polls.get(step.provider, 600), step.job.poll_seconds)
        for name, provider in self.providers.items():
            if provider.endpoint is None:
                continue
            settings = [provider.endpoint.url, *filter(None, [provider.endpoint.api_key])]
            problems += [f"providers.{name}.endpoint: {s!r} must be a need of the "
                         "batch-item-processor" for s in settings if s not in needs]  # fmt: skip
            key = provider.endpoint.api_key
            if key is not None and key not in self.secrets:
                problems.append(f"providers.{name}.endpoint: its api_key {key!r} must be a secret")
            if "remote_job" in calls.get(name, set()) and calls[name] != {"remote_job"}:
                problems.append(
                    f"providers.{name}: runs remote jobs, so every step calling it must be one "
                    "(its max_concurrent counts jobs)"
                )
            if name in polls and JOB_POLLS not in publishes:
                problems.append(
                    f"functions.batch-item-processor.publishes: {JOB_POLLS!r} is needed, or no "
                    f"item waiting for {name}'s jobs is polled"
                )
            if name in polls and self.job_start_rate(name) < 1:
                problems.append(
                    f"providers.{name}.requests_per_minute ({provider.requests_per_minute}) must "
                    f"exceed its polls, max_concurrent x 60 / the shortest poll_seconds "
                    f"({provider.max_concurrent * 60 / polls[name]:g}), to leave room for starts"
                )
        return problems

    def _whatsapp_kind_problems(self) -> list[str]:
        """Every WhatsApp message's reply is the whatsapp kind's work, ending in its send."""
        kind = self.kinds.get(WHATSAPP_KIND)
        if kind is None:
            return [f"kinds: {WHATSAPP_KIND!r} must be declared (every WhatsApp message's reply)"]
        if kind.default:
            return [f"kinds.{WHATSAPP_KIND}: it is WhatsApp's, so not the batches' default"]
        if kind.step_problems():
            return []  # said already
        final = kind.plan().final
        if kind.steps[final].call != "whatsapp_reply":
            return [f"kinds.{WHATSAPP_KIND}: its last step ({final}) must be a whatsapp_reply"]
        return []

    @property
    def batch_kinds(self) -> list[str]:
        """The kinds a batch may name: all but WhatsApp's."""
        return [name for name in self.kinds if name != WHATSAPP_KIND]

    def poll_seconds(self, provider: str) -> float | None:
        """The shortest poll interval of the remote-job steps calling `provider`, if any."""
        steps = [step for kind in self.kinds.values() for step in kind.steps.values()]
        polls = [s.job.poll_seconds for s in steps if s.provider == provider and s.job]
        return min(polls, default=None)

    def job_start_rate(self, provider: str) -> int:
        """The requests a minute a remote-job provider leaves for starting jobs: its rate less
        what polling its running jobs takes at most (each polled every poll_seconds)."""
        p = self.providers[provider]
        poll = self.poll_seconds(provider)
        if poll is None:
            return p.requests_per_minute
        return math.floor(p.requests_per_minute - p.max_concurrent * 60 / poll)

    def _setting_problems(self) -> list[str]:
        """Each secret is named once, and is a setting some function needs (or nothing would
        read the Secret Manager secret Terraform creates for it); what a function uses is
        neither a secret nor one of its needs."""
        needed = {n for f in self.functions.values() for n in f.needs}
        problems = [f"secrets: {n!r} is listed twice" for n in sorted(set(self.secrets))
                    if self.secrets.count(n) > 1]  # fmt: skip
        for name, function in self.functions.items():
            problems += [f"functions.{name}.uses: {n!r} is a secret, so a need" for n in
                         function.uses if n in self.secrets]  # fmt: skip
            problems += [f"functions.{name}.uses: {n!r} is a need already" for n in
                         function.uses if n in function.needs]  # fmt: skip
        problems += [
            f"secrets: {n!r} is no function's need" for n in self.secrets if n not in needed
        ]
        return problems

    def _export_deadline_problems(self) -> list[str]:
        """A writer dying at its batch's last row still leaves every row in the sheet within
        exports.complete_within_seconds: its event comes again within redelivery_seconds, takes
        its own lease over at once, and drains what is left in one write call (a wait for the
        quota, then the call), rows_per_call at a time."""
        exports, sheets = self.exports, self.providers["sheets"]
        after_death = {
            "exports.redelivery_seconds": exports.redelivery_seconds,
            "exports.capacity_wait_seconds": exports.capacity_wait_seconds,
            "providers.sheets.timeout_seconds": sheets.timeout_seconds,
        }
        total = sum(after_death.values())
        if total <= exports.complete_within_seconds:
            return []
        return [
            f"exports.complete_within_seconds ({exports.complete_within_seconds}) must be at "
            f"least {' + '.join(after_death)} ({total:g}): the redelivery of a writer that died, "
            "then one write call's wait and the call"
        ]

    def _budget_problems(self) -> list[str]:
        """Time budgets: a lease outlasts the work after its claim, an ack deadline the whole
        delivery of what its subscription carries, and the stall time every work backoff."""
        problems = []
        work, providers = self.work, self.providers
        timeout = {name: p.timeout_seconds for name, p in providers.items()}
        # After the claim: the AI call (a CRM item), or the AI call, the wait for WhatsApp
        # capacity and the send (a reply); then the outcome is recorded.
        # After the claim, a step of a kind's work (a WhatsApp reply's too): the wait for its
        # provider's permit (a pipeline's steps take theirs after the claim), its call, then
        # its record. One delivery runs one wave of steps, at the same time.
        after_claim: dict[str, float] = {}
        for kind_name, kind in self.kinds.items():
            for step_name, step in kind.steps.items():
                if step.provider in providers:
                    after_claim[
                        f"work.capacity_wait_seconds + providers.{step.provider}.timeout_seconds "
                        f"+ work.bookkeeping_seconds (kinds.{kind_name}.steps.{step_name})"
                    ] = (work.capacity_wait_seconds + providers[step.provider].timeout_seconds
                         + work.bookkeeping_seconds)  # fmt: skip
        longest = max(after_claim, key=lambda k: after_claim[k], default="")
        if longest and work.lease_seconds <= after_claim[longest]:
            problems.append(
                f"work.lease_seconds ({work.lease_seconds}) must exceed the work after a claim, "
                f"{longest} ({after_claim[longest]:g}), or another delivery takes the item over "
                "while it is still being worked on"
            )
        schedule_topics = {s.topic for s in self.schedules.values()}
        for name, sub in self.subscriptions.items():
            ack = sub.ack_deadline_seconds
            must = "exceed"
            if sub.topic in (WORK_ITEMS, WHATSAPP_EVENTS, JOB_POLLS):
                # The wait for capacity before the claim, then at most the lease.
                what = "work.capacity_wait_seconds + work.lease_seconds"
                delivery = work.capacity_wait_seconds + work.lease_seconds
            elif sub.topic == BATCH_EVENTS:
                what = (
                    "work.capacity_wait_seconds + providers.callbacks.timeout_seconds + "
                    "work.bookkeeping_seconds"
                )
                delivery = (
                    work.capacity_wait_seconds + timeout.get("callbacks", 0)
                    + work.bookkeeping_seconds
                )  # fmt: skip
            elif sub.topic in schedule_topics:
                # A sweep calls no provider; its Firestore reads grow with the open batches and
                # only its function's timeout bounds it. Sent again while it runs, two sweeps
                # would republish the same items.
                must = "be at least"
                what = f"functions.{sub.push_to}.limits.timeout_seconds"
                fn = self.functions.get(sub.push_to)
                delivery = fn.limits.timeout_seconds if fn else 0
            else:
                # Dead letters (and anything else): Firestore records only.
                what = "work.bookkeeping_seconds"
                delivery = work.bookkeeping_seconds
            if ack < delivery or (ack == delivery and must == "exceed"):
                problems.append(
                    f"subscriptions.{name}.ack_deadline_seconds ({ack}) must {must} the whole "
                    f"delivery, {what} ({delivery:g}), or Pub/Sub delivers the message again "
                    "while it is still being worked on"
                )
            if sub.topic == WORK_ITEMS and work.stall_seconds <= sub.retry.maximum_backoff_seconds:
                problems.append(
                    f"work.stall_seconds ({work.stall_seconds:g}) must exceed "
                    f"subscriptions.{name}.retry.maximum_backoff_seconds "
                    f"({sub.retry.maximum_backoff_seconds}), or items waiting out their backoff "
                    "get duplicate messages from the sweeper"
                )
        return problems

    @property
    def dead_letter_topics(self) -> list[str]:
        return sorted({t.dead_letter for t in self.topics.values() if t.dead_letter})

    @property
    def all_topics(self) -> list[str]:
        """Every topic to create: work topics, dead-letter topics and the parking lot."""
        return [*self.topics, *self.dead_letter_topics, self.parking_lot.topic]

    def dead_letter_of(self, subscription: str) -> str:
        """Where the subscription's undeliverable messages go."""
        topic = self.topics.get(self.subscriptions[subscription].topic)
        return topic.dead_letter if topic and topic.dead_letter else self.parking_lot.topic

    def dead_letter_source(self, topic: str) -> str | None:
        """The topic whose undeliverable messages `topic` receives, if it is a dead-letter topic."""
        return next((name for name, t in self.topics.items() if t.dead_letter == topic), None)

    def quiet_after(self, topic: str) -> float:
        """The longest a delivery chain of a message on `topic` stays silent while alive: its
        ack deadline (a delivery ended or timed out) plus its longest retry backoff, over the
        topic's subscriptions. A message with no delivery for longer has no live chain."""
        return max(
            (s.ack_deadline_seconds + s.retry.maximum_backoff_seconds
             for s in self.subscriptions.values() if s.topic == topic),
            default=0,
        ) + self.work.bookkeeping_seconds  # fmt: skip

    def subscriptions_of(self, function: str) -> dict[str, Subscription]:
        return {n: s for n, s in self.subscriptions.items() if s.push_to == function}

    def triggers_of(self, function: str) -> dict[str, FirestoreTrigger]:
        return {n: t for n, t in self.firestore_triggers.items() if t.function == function}


def parse_topology(text: str) -> Topology:
    return Topology.model_validate(yaml.safe_load(text))


@cache
def load_topology(path: Path = REPO_TOPOLOGY) -> Topology:
    """Load and validate the topology once per process."""
    if not path.is_file():
        raise FileNotFoundError(f"topology file not found: {path} (set SLUICE_TOPOLOGY)")
    return parse_topology(path.read_text())
