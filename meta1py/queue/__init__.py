"""The queue's storage layer: queue ids, content files and the envelope store.

- :mod:`meta1py.queue.ids`: ``new_queue_id()``, ``is_queue_id()``.
- :mod:`meta1py.queue.content`: message bodies under ``queue_directory/content/``; written by smtps
  (``ContentWriter``) and fsync'd by qmgr with the envelope commit (``sync_content_files``; qmgr
  uses ``DirectorySyncer`` for bounces), read by smtpc (``open_content``), removed by qmgr
  (``remove_content``, ``scan_content_ids``).
- :mod:`meta1py.queue.envelopes`: ``queue_directory/envelopes.sqlite``, written only by qmgr
  (``EnvelopeStore``, ``GroupCommitter``); read-only for the queue CLI.
- :mod:`meta1py.queue.pickup`: ``queue_directory/pickup/``, mail ``meta1 sendmail`` wrote while
  smtps could not take it (the file format, its writer, and the reader qmgr uses).

The durability promise (design.md §4): smtps answers 250 only after qmgr's
``GroupCommitter.commit_new()`` has returned, which fsyncs the content file and its directory
(``sync_content_files``) and then commits the envelope (transaction fsync), in one thread trip.
Every failure of the storage itself is a :class:`QueueStorageError` (``disk_full`` selects
452 4.3.1 over 451 4.3.0).

Import the submodules directly (``from meta1py.queue.content import ContentWriter``); this package
re-exports only the error and the id helpers so that importing it stays cheap.
"""

from meta1py.queue.errors import QueueStorageError
from meta1py.queue.ids import is_queue_id, new_queue_id

__all__ = ["QueueStorageError", "is_queue_id", "new_queue_id"]
