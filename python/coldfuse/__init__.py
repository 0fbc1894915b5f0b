"""coldfuse: a Python client for the ColD Fusion server (docs/python.md).

    from coldfuse import Client
    c = Client("fusion.example.org:7878", ca="ca.crt", token_file="me.token")
    base, version = c.pull_tensors()                 # {name: torch.Tensor}
    ...fine-tune...
    c.push(model.state_dict(), num_examples=8544, task="sst2", from_base=version)
"""
from coldfuse.client import (Client, PulledBase, PushResult, load_safetensors,
                             new_upload_id)
from coldfuse.errors import Error

__all__ = ["Client", "Error", "PulledBase", "PushResult", "load_safetensors",
           "new_upload_id"]
__version__ = "0.1.0"
