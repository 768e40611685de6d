"""The transactional store: every SQL statement of the server lives here.

See core.Store for the public interface.
"""

from server.store.core import CommitListener, Store

__all__ = ["CommitListener", "Store"]
