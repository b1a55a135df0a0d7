"""The Python API: submit jobs, follow them, cancel them, fetch their outputs.

    from stoker.client import Stoker
    from stoker.config import load_settings

    with Stoker(load_settings()) as stoker:
        job = stoker.submit("speak", {"text": "Hello there."})
        job = stoker.wait(job.id)
        stoker.download(job.id, Path("out"))

The CLI and the HTTP API are thin layers over :class:`Stoker` (stoker.py); what
its retries, clean-up and downloads do is in retries.py, cleanup.py and downloads.py.
"""

from stoker.client.cleanup import Pruned, Swept
from stoker.client.retries import Retried
from stoker.client.stoker import Stoker

__all__ = ["Pruned", "Retried", "Stoker", "Swept"]
