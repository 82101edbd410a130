"""WhatsApp events, one at a time: a user's message gets one reply; a status moves forward.

A message becomes an item of its phone number's job for the day, keyed by its message id, so a
delivery Meta repeats (for up to 7 days) finds the item already there, and already finished. Its
reply is the work of the `whatsapp` kind (topology.yaml): its steps, a wave per delivery, each
step's output recorded as it succeeds, the last one the send, which is never made twice.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

from sluice.adapters.conversations_store import ConversationStore, message_key
from sluice.adapters.intake_store import IntakeStore
from sluice.adapters.provider_api import ProviderAPI
from sluice.adapters.publisher import Publisher
from sluice.adapters.tenants_store import TenantStore
from sluice.adapters.whatsapp_api import WhatsAppAPI
from sluice.clock import now
from sluice.domain.conversations import Ref, Turn
from sluice.domain.items import FINISHED, ItemState
from sluice.domain.jobs import new_job
from sluice.domain.pipelines import Plan
from sluice.domain.whatsapp import (
    daily_job_id,
    inbound_input,
    message_again,
    message_time,
    should_reply,
)
from sluice.handlers.processor import (
    Capacity,
    Claiming,
    Progress,
    StepProvider,
    process_item,
    run_wave,
)
from sluice.messages import WHATSAPP_EVENTS, WhatsAppEventMessage
from sluice.outcomes import Ack, Defer, NextWave
from sluice.topology import WHATSAPP_KIND

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WhatsAppDeps:
    claiming: Claiming
    intake: IntakeStore
    tenants: TenantStore
    conversations: ConversationStore
    # The whatsapp kind's steps, and the providers they call: each (a model's, WhatsApp's
    # sends) with its interactive share, counted per business number (`holder`).
    reply: Plan
    providers: dict[str, ProviderAPI]
    whatsapp: WhatsAppAPI
    capacities: dict[str, Capacity]
    publisher: Publisher


def handle_event(deps: WhatsAppDeps, event: WhatsAppEventMessage) -> Ack:
    if event.kind == "error":
        log.warning("WhatsApp reported an error for %s: %s", event.phone_number_id, event.body)
        return Ack(event.phone_number_id, "error reported")
    if event.kind == "status":
        status = event.body
        recipient = str(status.get("recipient_id", ""))
        new = deps.conversations.apply_status(
            event.phone_number_id, recipient, str(status["id"]), status, at=now()
        )
        return Ack(str(status["id"]), new, f"status {status['status']}")
    return handle_message(deps, event)


def handle_message(deps: WhatsAppDeps, event: WhatsAppEventMessage) -> Ack:
    recorded = record_message(deps, event)
    if recorded is None:
        return Ack(str(event.body.get("id")), "dropped", "no tenant has the phone number")
    job_id, item_id = recorded
    phone_id = event.phone_number_id

    def reply(item: dict[str, Any], job: dict[str, Any], progress: Progress) -> dict[str, Any]:
        if not should_reply(item["message"], event.display_phone_number):
            return {"reply": None, "note": f"no reply to a {item['type']} message"}
        to, reply_to = item["from"], item["message_id"]

        def send(text: str) -> dict[str, Any]:
            wamid = deps.whatsapp.send_text(phone_id, to, text, reply_to=reply_to)
            return {"reply": text, "reply_message_id": wamid}

        providers = {
            name: StepProvider(
                deps.providers.get(name), replace(capacity, holder=phone_id),
                reply=send if name == "whatsapp" else None,
            )
            for name, capacity in deps.capacities.items()
        }  # fmt: skip
        # A wave a delivery: NextWave brings the message back at once for the next one.
        result = run_wave(providers, deps.reply, item, job, progress)
        # Recorded when the item finishes (the send's output is recorded already): a delivery
        # that failed here finishes it next time, without sending again.
        deps.conversations.record_outbound(
            phone_id, to, result["reply_message_id"],
            {"type": "text", "text": result["reply"], "in_reply_to": reply_to, "sent_at": now()},
        )  # fmt: skip
        return result

    # Its turn in the conversation first (see sluice.domain.conversations): an earlier message
    # waiting for capacity is answered first.
    me, user = Ref(job_id, item_id), str(event.body["from"])
    queued = deps.conversations.waiting(phone_id, user)
    if queued:
        seen = deps.claiming.items.read_item(job_id, item_id)
        if seen is not None and ItemState(seen.doc["state"]).finished:
            # A repeat of a finished message (perhaps one that died before letting the next
            # one go): the next one goes now.
            let_next_go(deps, phone_id, user, me)
            return Ack(item_id, seen.doc["state"], "duplicate delivery")
        turn = deps.conversations.take_turn(phone_id, user, me)
        if turn is not Turn.GO:
            return Ack(item_id, "waiting", "an earlier message of its conversation waits")
    # Each step of the reply takes its own permit: a message that gets no reply needs none, and
    # never waits.
    try:
        ack = process_item(deps.claiming, reply, job_id, item_id)
    except NextWave as more:
        # It keeps its turn (a later message of its conversation waits behind it), and its
        # event comes again at once for the next wave.
        deps.conversations.park(phone_id, user, me, at=now())
        bring(deps, phone_id, me)
        return Ack(item_id, "running", more.reason)
    except Defer as deferred:
        # Acknowledged, not refused: a refusal would count toward dead-lettering it. It waits
        # at the head of its conversation for the sweeper to bring it back.
        deps.conversations.park(phone_id, user, me, at=now())
        return Ack(item_id, "waiting", f"parked: {deferred.reason}")
    if queued and ack.state in FINISHED:  # ItemState is a StrEnum: its values compare
        let_next_go(deps, phone_id, user, me)
    return ack


def let_next_go(deps: WhatsAppDeps, phone_id: str, user: str, me: Ref) -> None:
    """`me` is finished: out of its conversation's queue, and the message it held back brought."""
    after = deps.conversations.done(phone_id, user, me, at=now())
    if after is not None:
        bring(deps, phone_id, after)


def bring(deps: WhatsAppDeps, phone_id: str, waiting: Ref) -> bool:
    """Send a waiting message's event again, in its conversation's order: False if its item is
    gone (nothing to bring)."""
    inputs = deps.claiming.items.item_inputs(waiting.job_id, [waiting.item_id])
    if waiting.item_id not in inputs:
        return False
    event = message_again(phone_id, inputs[waiting.item_id])
    deps.publisher.publish_keyed(WHATSAPP_EVENTS, [(event.to_message(), event.ordering_key)])
    return True


def record_message(deps: WhatsAppDeps, event: WhatsAppEventMessage) -> tuple[str, str] | None:
    """The message as an item of its number's job for the day (created once, whatever the number
    of deliveries): its (job id, item id), or None when no tenant has the phone number."""
    message, phone_id = event.body, event.phone_number_id
    tenant = deps.tenants.by_phone(phone_id)
    if tenant is None:
        # Redelivery cannot fix it: say so and acknowledge.
        log.error("no tenant has phone number id %s; message %s dropped", phone_id, message["id"])
        return None
    received = now()
    job_id = daily_job_id(tenant[0], phone_id, message_time(message, received))
    day = new_job(
        tenant=tenant[0], kind=WHATSAPP_KIND, params={}, total=0, at=received,
        phone_number_id=phone_id,
    )  # fmt: skip
    deps.intake.ensure_job(job_id, day)
    item_input = inbound_input(message, event.contact)
    item_id = message_key(message["id"])
    deps.intake.add_item(job_id, item_id, item_input, at=received)
    deps.conversations.record_inbound(
        phone_id,
        message["from"],
        message["id"],
        {"type": item_input["type"], "text": item_input["text"], "received_at": received},
    )
    return job_id, item_id
