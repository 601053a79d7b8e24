"""
What the policy remembers between stanzas (candidate rules, encoded labels,
release decisions): values that depend only on the policy and the key,
bounded in entries and in bytes.
"""

from __future__ import annotations


class BoundedMemory:
    """
    Values remembered by key, bounded in entries and in bytes (the cost of
    each entry is told when it is put): one that would pass either bound
    empties it first, one larger than the byte bound is not remembered.
    """

    def __init__(self):
        self._found = {}
        self.used = 0

    def __len__(self):
        return len(self._found)

    def items(self):
        return self._found.items()

    def get(self, key):
        return self._found.get(key)

    def put(self, key, value, cost, entries, size_bytes):
        if cost > size_bytes:
            return
        if len(self._found) >= entries or self.used + cost > size_bytes:
            self._found.clear()
            self.used = 0
        self._found[key] = value
        self.used += cost
