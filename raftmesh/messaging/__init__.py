"""Agent messaging on a node: the fast path over peer streams, routing, topics (README "Messages").

``MessageRouter`` (``router``) sends and receives messages for everything on its node
(the ``Messages`` gRPC service, actors, tasks); ``raftmesh.agents._actors.ActorHost``
runs the actor activations this node holds. The replicated half (activations,
mailboxes, topics, dead letters) is ``raftmesh.consensus.messages``.
"""

from .api import Deliver, Sent
from .router import MessageRouter

__all__ = ["Deliver", "MessageRouter", "Sent"]
