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
from sluice.messages import BATCH_EVENTS, WHATSAPP_EVENTS, WORK_ITEMS

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

    @property
    def number_max_concurrent(self) -> int | None:
        if self.number_max_share is None:
            return None
        return max(1, math.floor(self.max_concurrent * self.number_max_share))


ProviderName = Literal["ai", "whatsapp", "callbacks", "sheets"]


class Providers(_Strict):
    """The outside services Sluice calls, each under its limits. Named fields, not a map: a key
    renamed or missing in topology.yaml fails when the topology loads, not at the first message
    that needs it."""

    ai: Provider  # the model the processor calls for every item and every WhatsApp reply
    whatsapp: Provider  # the WhatsApp Cloud API's sends
    callbacks: Provider  # the CRMs' completion callback endpoints
    sheets: Provider  # the Google Sheets API's writes

    def named(self) -> dict[ProviderName, Provider]:
        return {name: getattr(self, name) for name in ("ai", "whatsapp", "callbacks", "sheets")}

    def __getitem__(self, name: ProviderName) -> Provider:
        return self.named()[name]


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


class StepMessage(_Strict):
    role: Literal["system", "user", "assistant"]
    content: str  # a template (sluice.domain.templates)

    @model_validator(mode="after")
    def _compiles(self) -> StepMessage:
        wrong = templates.check(self.content)
        if wrong:
            raise ValueError(f"the {self.role} message's template does not compile: {wrong}")
        return self


class Step(_Strict):
    """One call of a kind's work: to which provider, of which shape, sending what."""

    # Issue 16 opens these to every provider declared and to `http` and remote-job calls.
    provider: Literal["ai"]
    call: Literal["chat"]
    messages: list[StepMessage] = Field(min_length=1)
    # The steps whose outputs this one needs (`steps.<name>` in its templates), declared before
    # it; it starts once they have all succeeded.
    after: list[str] = Field(default_factory=list)

    def chat_template(self) -> templates.ChatTemplate:
        return templates.ChatTemplate(
            [templates.ChatMessage(m.role, m.content) for m in self.messages]
        )


class Kind(_Strict):
    """A kind of batch work a CRM may submit (`kind` in `POST /v1/batches`)."""

    description: str = Field(min_length=1)
    # The kind of a batch that names none; exactly one kind is.
    default: bool = False
    steps: dict[KindName, Step] = Field(min_length=1)

    def plan(self) -> pipelines.Plan:
        order = pipelines.in_order({name: step.after for name, step in self.steps.items()})
        return pipelines.Plan(tuple(
            pipelines.PlannedStep(name, tuple(self.steps[name].after),
                                  self.steps[name].chat_template())
            for name in order
        ))  # fmt: skip

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
    providers: Providers
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
        for name, provider in self.providers.named().items():
            cap = provider.tenant_max_concurrent
            if cap is not None and cap >= provider.max_concurrent:
                problems.append(
                    f"providers.{name}.tenant_max_concurrent ({cap}) must be below its "
                    f"max_concurrent ({provider.max_concurrent}), or one tenant can hold every slot"
                )
        for name, schedule in self.schedules.items():
            if schedule.topic not in self.topics:
                problems.append(f"schedule {name}: unknown topic {schedule.topic!r}")
        call = self.exports.capacity_wait_seconds + self.providers.sheets.timeout_seconds
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
        exports, sheets = self.exports, self.providers.sheets
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
        timeout = {name: p.timeout_seconds for name, p in providers.named().items()}
        # After the claim: the AI call (a CRM item), or the AI call, the wait for WhatsApp
        # capacity and the send (a reply); then the outcome is recorded.
        after_claim = {
            "providers.ai.timeout_seconds + work.bookkeeping_seconds": (
                timeout.get("ai", 0) + work.bookkeeping_seconds
            ),
            "providers.ai.timeout_seconds + work.capacity_wait_seconds + "
            "providers.whatsapp.timeout_seconds + work.bookkeeping_seconds": (
                timeout.get("ai", 0) + work.capacity_wait_seconds + timeout.get("whatsapp", 0)
                + work.bookkeeping_seconds
            ),
        }  # fmt: skip
        longest = max(after_claim, key=lambda k: after_claim[k])
        if work.lease_seconds <= after_claim[longest]:
            problems.append(
                f"work.lease_seconds ({work.lease_seconds}) must exceed the work after a claim, "
                f"{longest} ({after_claim[longest]:g}), or another delivery takes the item over "
                "while it is still being worked on"
            )
        schedule_topics = {s.topic for s in self.schedules.values()}
        for name, sub in self.subscriptions.items():
            ack = sub.ack_deadline_seconds
            must = "exceed"
            if sub.topic in (WORK_ITEMS, WHATSAPP_EVENTS):
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
