"""One model per process, or one per machine shared across SDK processes, behind Beam's ModelHandler shape.

A per-shard DoFn (``dpmesh-label``) and ``RunInference`` both get their model from a handler's ``load_model``.
When the handler shares its model (``share_model_across_processes()``, true on GPU workers), the model lives in
one process and every other SDK process holds an ``AutoProxy`` to it (Beam's ``MultiProcessShared``, as
``RunInference`` does). A proxy forwards **method calls only**: reading an attribute (``model.device``) through it
fails. So whatever a handler loads is a small service object whose every use is a method call with picklable
arguments and results (numpy arrays, dataclasses of them), never a ``torch.nn.Module`` to poke at.
"""

import hashlib
import json
import threading
from typing import Any

from apache_beam.utils.multi_process_shared import MultiProcessShared


_PROCESS_MODELS: dict[str, Any] = {}
_PROCESS_LOCK = threading.Lock()


def model_tag(kind: str, config: Any) -> str:
    """A file-name-safe tag naming one model configuration (``<kind>-<sha1 of the config>``).

    ``MultiProcessShared`` keys its lock and address files by this tag in the temp folder, and every process of a
    machine asking for the same tag gets the same model.
    """
    digest = hashlib.sha1(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return f"dpmesh-{kind}-{digest}"


def acquire_model(handler: Any, tag: str) -> Any:
    """The handler's model: shared across the machine's processes (a proxy) or loaded once in this process.

    Args:
        handler: A Beam ``ModelHandler`` (``load_model``, ``share_model_across_processes``).
        tag: :func:`model_tag` of the handler's configuration.
    """
    if handler.share_model_across_processes():
        # always_proxy: even the process that hosts the model calls it through the proxy, so one code path is
        # exercised everywhere (and a CPU test with sharing forced on runs exactly what GPU workers run).
        return MultiProcessShared(handler.load_model, tag=tag, always_proxy=True).acquire()
    kind = tag.rsplit("-", 1)[0]
    with _PROCESS_LOCK:
        if tag not in _PROCESS_MODELS:
            for old in [t for t in _PROCESS_MODELS if t.rsplit("-", 1)[0] == kind]:
                del _PROCESS_MODELS[old]  # one configuration per kind: a new one replaces the old (memory)
            _PROCESS_MODELS[tag] = handler.load_model()
        return _PROCESS_MODELS[tag]
