"""CPU memory machinery of the PyTorch backends, behind one switch.

On a CPU, routing is bound by memory rather than arithmetic: it reads the votes several times per iteration,
and a fresh votes-sized tensor (tens of MB) is mapped anew by the allocator and page-faults on its first write.
The algorithms stay written as their papers are; these modules only decide where their tensors live:

- ``chunking``: samples are routed a cache-sized chunk at a time, so repeated reads come from the cache.
- ``memory``: large tensors written once are advised onto transparent huge pages (one fault per 2 MiB).
- ``product``: the dense layer's votes product written to huge pages.
- ``workspace``: per-thread scratch buffers that live as long as the process (``release_workspaces()`` frees
  this thread's).
- ``fusion``: the two-buffer protocol with which a fused dense-layer router forms its votes inside the call.

One switch turns all of it off (``routing.cpu.tuning(False)``, or ``CAPSULES_CPU_TUNING=0`` in the
environment): the PyTorch backends then run as plain PyTorch, one chunk per batch, votes formed by ``torch.bmm``
and routed unfused. Results are the same either way; only time and memory differ. GPU tensors never use it.
"""

from routing.cpu.switch import tuning, tuning_enabled
from routing.cpu.workspace import release_workspaces

__all__ = ["release_workspaces", "tuning", "tuning_enabled"]
