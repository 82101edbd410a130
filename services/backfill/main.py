"""backfill: Firestore trigger on export writes (jobs/{job}/exports/{export}).

An event not done with (Sheets busy or down) is answered so that Eventarc delivers it again
(see sluice.eventarc).
"""

import functions_framework
from cloudevents.http import CloudEvent

from sluice import bootstrap, eventarc, logs
from sluice.outcomes import NotDone

logs.configure()

# Built on the first event, once per process, and shared by its threads.
handler = bootstrap.Once(bootstrap.backfill)
functions_framework.errorhandler(NotDone)(eventarc.not_done)


@functions_framework.cloud_event
def backfill(cloud_event: CloudEvent) -> None:
    eventarc.handle(cloud_event, handler())
