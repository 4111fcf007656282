"""Which weight files a model folder holds and which of them a loader reads: a diffusers
``UNet2DModel`` folder loads ``config.json`` and either one safetensors file or a sharded
index with its shards; any other weight file beside them is refused (one line naming it),
so what is hashed is what is loaded."""

from __future__ import annotations

import json
from pathlib import Path

from ..core.errors import InputFileError, RunFolderError, first_line

UNET_WEIGHTS = "diffusion_pytorch_model.safetensors"
UNET_INDEX = f"{UNET_WEIGHTS}.index.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".msgpack", ".h5",
                   ".onnx", ".gguf", ".index.json")
"""Names of files a model loader could read weights from (a folder holding one that is not
loaded is refused, :func:`unet_files`)."""
PICKLED = ".bin"  # diffusers' pickled weights: never loaded, allowed beside the safetensors


def is_weight_file(name: str) -> bool:
    return name.endswith(WEIGHT_SUFFIXES)


def unet_files(folder: Path, error: type[InputFileError] = RunFolderError) -> list[str]:
    """The files (names in ``folder``) that loading a diffusers ``UNet2DModel`` folder reads:
    ``config.json`` and either ``diffusion_pytorch_model.safetensors`` or a sharded index
    ``diffusion_pytorch_model.safetensors.index.json`` with the shards it names. Any other
    weight file or index in the folder (another ``.safetensors``, a second index, a variant)
    is refused with a one-line ``error`` naming it, as is a folder with both a single file and
    an index; pickled ``.bin`` files are never read and allowed beside them."""
    present = {p.name for p in folder.iterdir() if p.is_file()} if folder.is_dir() else set()
    if "config.json" not in present:
        raise error(f"{folder / 'config.json'} is missing")
    if UNET_INDEX in present:
        if UNET_WEIGHTS in present:
            raise error(f"{folder} holds both {UNET_WEIGHTS} and {UNET_INDEX}; which one "
                        "diffusers loads is ambiguous: remove one")
        files = ["config.json", UNET_INDEX, *_shards(folder / UNET_INDEX, error)]
    elif UNET_WEIGHTS in present:
        files = ["config.json", UNET_WEIGHTS]
    else:
        raise error(f"{folder} has no {UNET_WEIGHTS} (safetensors weights)")
    for name in sorted(present - set(files)):
        if is_weight_file(name) and not name.endswith(PICKLED):
            raise error(f"{folder / name} is a weight file or index that is not loaded; "
                        f"remove it (this folder loads {', '.join(files[1:])})")
    missing = [n for n in files if n not in present]
    if missing:
        raise error(f"{folder / missing[0]} is missing (named in {folder / UNET_INDEX})")
    return files


def _shards(index: Path, error: type[InputFileError]) -> list[str]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        shards = sorted(set(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise error(f"{index} is not a readable weight index: {first_line(e)}") from None
    if not all(isinstance(s, str) and "/" not in s and s.endswith(".safetensors")
               for s in shards):
        raise error(f"{index}: shards must be .safetensors files in its folder")
    return shards

