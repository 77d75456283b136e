"""torchrun for one machine, with its rendezvous stores listening on 127.0.0.1 only.

    python -m frugal.torchrun_local --nproc-per-node 2 -m frugal.torchrun_train --model tiny

torchrun's agent hosts TCP stores that every rank reads and writes, without authentication; torch's TCPStore
listens on every interface whatever host it is given (`--rdzv-endpoint 127.0.0.1:PORT` included), so any
machine on the network can read and write the run's keys. This runs torchrun itself (torch.distributed.run)
with the stores it creates for a loopback host bound to 127.0.0.1, as frugal.dist.loopback_store does for
notebook launches. Across machines the stores must be reachable: use torchrun on a private network, with the
rendezvous port closed to everything else.
"""
from __future__ import annotations

import socket
import sys

import torch.distributed as dist
from torch.distributed import run
from torch.distributed.elastic.rendezvous import c10d_rendezvous_backend

LOOPBACK = ("127.0.0.1", "localhost", "::1")


class LoopbackTCPStore(dist.TCPStore):
    """A TCPStore whose server, for a loopback host, listens on a socket bound to 127.0.0.1 (not on every
    interface); clients and stores for other hosts are torch's own."""

    def __init__(self, host_name, port, world_size=None, is_master=False, **kwargs):
        if not (is_master and host_name in LOOPBACK and kwargs.get("master_listen_fd") is None):
            super().__init__(host_name, port, world_size, is_master, **kwargs)
            return
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))      # port 0: the OS picks a free one
        sock.listen(128)
        super().__init__(host_name, sock.getsockname()[1], world_size, is_master, master_listen_fd=sock.fileno(),
                         **kwargs)
        sock.detach()                       # the store owns the descriptor now


def check_single_machine(argv: list[str]) -> None:
    """Refuse what would need the stores reachable from other machines, naming what to run instead."""
    args = run.get_args_parser().parse_args(argv)
    nnodes = str(args.nnodes)
    endpoint_host = (args.rdzv_endpoint or "localhost").rsplit(":", 1)[0].strip("[]")
    if nnodes not in ("1", "1:1") or (not args.standalone and endpoint_host not in LOOPBACK + ("",)):
        raise SystemExit(f"frugal.torchrun_local runs on one machine (got --nnodes {nnodes}, --rdzv-endpoint "
                         f"{args.rdzv_endpoint!r}): pass --standalone, or for several machines use torchrun itself "
                         f"on a private network with the rendezvous port closed to other hosts")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    check_single_machine(argv)
    dist.TCPStore = LoopbackTCPStore                      # what torch.distributed.elastic creates its stores with
    c10d_rendezvous_backend.TCPStore = LoopbackTCPStore   # (this module imported the name before we replaced it)
    run.main(argv)


if __name__ == "__main__":
    main()
