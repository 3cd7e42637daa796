"""Command-line converters: an official DPMesh checkpoint → `save_pretrained` folder, SMPL `.pkl` → `.npz`.

`dpmesh-convert` reads a released `*_best_ckpt.pth.tar` once (safe loader, fp32, CPU) and writes the pickle-free
folder that the labelling pipeline loads (`model.pretrained=<dir>`); `dpmesh-convert-smpl` turns the licensed SMPL
neutral pickle into a plain `.npz` without executing pickle code. Plain argparse: no hydra, no Beam.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from dpmesh_core.body_model import BodyModel, SMPLData
from dpmesh_core.config import DPMeshConfig, official_config, tiny_config


EXIT_USAGE = 2
# Row of the official `data/J_regressor_extra.npy` used as the head-top joint (common/utils/smpl.py:21-35).
HEAD_TOP_ROW = 3
_CONFIGS = {"official": official_config, "tiny": tiny_config}


class _UsageError(Exception):
    """Bad command-line input: reported on stderr with exit status 2, no traceback."""


def _require_file(path: Path, what: str) -> None:
    if not path.is_file():
        raise _UsageError(f"{what} not found: {path}")


def _load_head_top(path: Path, num_vertices: int) -> np.ndarray:
    """Head-top regressor `(N,)` float32: row 3 of a `(K, N)` `J_regressor_extra.npy`, or an `(N,)` array."""
    array = np.load(path, allow_pickle=False)
    row = array[HEAD_TOP_ROW] if array.ndim == 2 and array.shape[0] > HEAD_TOP_ROW else array
    if row.shape != (num_vertices,):
        raise _UsageError(
            f"{path}: expected a (K>{HEAD_TOP_ROW}, {num_vertices}) J_regressor_extra or a ({num_vertices},) row, "
            f"got {array.shape}"
        )
    return np.asarray(row, dtype=np.float32)


def _check_output_dir(path: Path, overwrite: bool) -> None:
    if path.exists() and not path.is_dir():
        raise _UsageError(f"output {path} exists and is not a directory")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise _UsageError(f"output directory {path} is not empty (pass --overwrite to write into it anyway)")


def _convert(args: argparse.Namespace) -> None:
    from dpmesh_core.model import DPMesh

    checkpoint, output = Path(args.checkpoint), Path(args.output_dir)
    _require_file(checkpoint, "checkpoint")
    smpl: SMPLData | None = None
    if args.smpl_npz is not None:
        _require_file(Path(args.smpl_npz), "SMPL .npz")
        with np.load(args.smpl_npz, allow_pickle=False) as arrays:
            smpl = SMPLData.from_arrays(dict(arrays))
    if args.head_top_regressor is not None:
        _require_file(Path(args.head_top_regressor), "head-top regressor")
    _check_output_dir(output, args.overwrite)
    config: DPMeshConfig = _CONFIGS[args.config]()
    print(f"loading {checkpoint} ...", flush=True)
    model = DPMesh.from_official_checkpoint(checkpoint, device="cpu", dtype=torch.float32, smpl=smpl, config=config)
    if args.head_top_regressor is not None:
        data = model.body_model.data
        head_top = _load_head_top(Path(args.head_top_regressor), data.num_vertices)
        model.body_model = BodyModel(dataclasses.replace(data, head_top_regressor=head_top))
    model.save_pretrained(output)
    num_params = sum(p.numel() for p in model.parameters())
    print(f"model_id: {model.model_id}")
    print(f"parameters: {num_params:,}")
    print(f"wrote {output}:")
    for file in sorted(output.iterdir()):
        print(f"  {file.name}  ({file.stat().st_size / 1e6:.1f} MB)")
    print("use it with:")
    print(f"  dpmesh-label model=dpmesh model.pretrained={output}")
    print(f"  or in Python: DPMesh.from_pretrained({str(output)!r})")


def build_parser() -> argparse.ArgumentParser:
    """Parser of `dpmesh-convert`."""
    parser = argparse.ArgumentParser(
        prog="dpmesh-convert",
        description="Convert an official DPMesh *_best_ckpt.pth.tar into a pickle-free save_pretrained folder "
        "(config.json + model.safetensors + smpl.safetensors), fp32 on CPU.",
    )
    parser.add_argument("checkpoint", help="official *_best_ckpt.pth.tar (read with torch.load(weights_only=True))")
    parser.add_argument("output_dir", help="folder to write (must be empty or absent unless --overwrite)")
    parser.add_argument(
        "--smpl-npz", default=None, help="SMPL neutral .npz (dpmesh-convert-smpl); default: the checkpoint's buffers"
    )
    parser.add_argument(
        "--head-top-regressor",
        default=None,
        help=f"J_regressor_extra.npy of the official repository (row {HEAD_TOP_ROW} = head top); default: a vertex",
    )
    parser.add_argument("--config", choices=sorted(_CONFIGS), default="official", help="architecture (tiny: tests)")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty output directory")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `dpmesh-convert`. Returns 0, or 2 for bad input (message on stderr)."""
    args = build_parser().parse_args(argv)
    try:
        _convert(args)
    except _UsageError as exc:
        print(f"dpmesh-convert: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return 0


def convert_smpl_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `dpmesh-convert-smpl`: SMPL `.pkl` → `.npz`. Returns 0, or 2 for bad input."""
    from dpmesh_core.smpl_convert import convert_smpl_pickle

    parser = argparse.ArgumentParser(
        prog="dpmesh-convert-smpl",
        description="Convert the SMPL neutral pickle (SMPL_NEUTRAL.pkl / basicModel_neutral_lbs_10_207_0_v1.0.0.pkl) "
        "into a plain .npz, with a restricted unpickler (no code from the file is executed).",
    )
    parser.add_argument("smpl_pickle", help="SMPL .pkl")
    parser.add_argument("output_npz", help="output .npz")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    args = parser.parse_args(argv)
    src, dst = Path(args.smpl_pickle), Path(args.output_npz)
    if not src.is_file():
        print(f"dpmesh-convert-smpl: error: SMPL pickle not found: {src}", file=sys.stderr)
        return EXIT_USAGE
    if dst.exists() and not args.overwrite:
        print(f"dpmesh-convert-smpl: error: {dst} exists (pass --overwrite to replace it)", file=sys.stderr)
        return EXIT_USAGE
    if dst.suffix != ".npz":  # np.savez would silently append ".npz"
        print(f"dpmesh-convert-smpl: error: output must end in .npz: {dst}", file=sys.stderr)
        return EXIT_USAGE
    dst.parent.mkdir(parents=True, exist_ok=True)
    convert_smpl_pickle(src, dst)
    print(f"wrote {dst}; use it with: dpmesh-convert CKPT OUT_DIR --smpl-npz {dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
