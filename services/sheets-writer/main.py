"""sheets-writer: Firestore trigger on a result queued for a job's Sheets export (the creation of
jobs/{job}/exports/sheets/rows/{item}).

An event not done with (Sheets busy or down) is answered so that Eventarc delivers it again
(see sluice.eventarc).
"""

import functions_framework
from cloudevents.http import CloudEvent

from sluice import bootstrap, eventarc, logs
from sluice.outcomes import NotDone

logs.configure()

# Built on the first event, once per process, and shared by its threads.
handler = bootstrap.Once(bootstrap.sheets_writer)
functions_framework.errorhandler(NotDone)(eventarc.not_done)


@functions_framework.cloud_event
def sheets_writer(cloud_event: CloudEvent) -> None:
    eventarc.handle(cloud_event, handler())
