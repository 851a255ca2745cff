"""Effect handlers that turn a reasoning program into a resumable particle.

``ReplayMessenger`` feeds recorded values back in visit order,
``EscapeMessenger`` stops the program at its first unrecorded random choice,
and ``RecordMessenger`` collects the visited sites and their weights. The
runtime stacks them as ``with record, escape, replay:`` (Pyro runs the most
recently entered handler first).
"""

from ppl.handlers.escape_messenger import EscapeMessenger, PendingChoice, Suspend
from ppl.handlers.record_messenger import RecordMessenger
from ppl.handlers.replay_messenger import ReplayMessenger
from ppl.handlers.sites import site_kind

__all__ = [
    "EscapeMessenger",
    "PendingChoice",
    "RecordMessenger",
    "ReplayMessenger",
    "Suspend",
    "site_kind",
]
