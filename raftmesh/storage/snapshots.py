"""State snapshots as single-file LMDB environments.

pysyncobj calls the serializer with a temporary path and renames it to the dump
path afterwards; lagging followers are sent that one file. So a snapshot is one
LMDB file (``subdir=False``, no lock file), written with ``sync=True`` and closed
(fsync) before pysyncobj renames it.

Layout: ``meta`` (pysyncobj's raft metadata, pickled by pysyncobj), ``format``,
``digest`` and the state bytes split into chunks ``state/000000``... so that no
single value is huge.
"""

from __future__ import annotations

import hashlib
import os

import lmdb

from ..errors import DataLoss

FORMAT = b"raftmesh-snapshot-1"
CHUNK_BYTES = 4 * 1024 * 1024
MAP_SIZE_MIN = 64 * 1024 * 1024


class SnapshotError(DataLoss, RuntimeError):
    """A snapshot file that is not ours or is damaged."""


class LmdbSnapshotIO:
    """Implements ``raftmesh.consensus.raft.SnapshotIO``."""

    def write(self, path: str, raft_meta: bytes, state: bytes) -> None:
        for p in (path, path + "-lock"):
            if os.path.exists(p):
                os.unlink(p)
        map_size = max(MAP_SIZE_MIN, 2 * (len(state) + len(raft_meta)) + 16 * 1024 * 1024)
        env = lmdb.open(path, subdir=False, lock=False, map_size=map_size, sync=True, metasync=True)
        try:
            with env.begin(write=True) as txn:
                txn.put(b"format", FORMAT)
                txn.put(b"meta", raft_meta)
                txn.put(b"digest", hashlib.sha256(state).hexdigest().encode())
                chunks = 0
                for off in range(0, max(len(state), 1), CHUNK_BYTES):
                    txn.put(b"state/%06d" % chunks, state[off : off + CHUNK_BYTES])
                    chunks += 1
                txn.put(b"chunks", str(chunks).encode())
            env.sync(True)
        finally:
            env.close()
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def read(self, path: str) -> tuple[bytes, bytes]:
        env = lmdb.open(path, subdir=False, lock=False, readonly=True, map_size=MAP_SIZE_MIN)
        try:
            with env.begin() as txn:
                if txn.get(b"format") != FORMAT:
                    raise SnapshotError(f"{path} is not a raftmesh snapshot")
                meta = txn.get(b"meta")
                chunks = int(txn.get(b"chunks", b"0"))
                state = b"".join(bytes(txn.get(b"state/%06d" % i, b"")) for i in range(chunks))
                digest = txn.get(b"digest", b"").decode()
        finally:
            env.close()
        if meta is None or hashlib.sha256(state).hexdigest() != digest:
            raise SnapshotError(f"snapshot {path} is damaged (digest mismatch)")
        return bytes(meta), state
