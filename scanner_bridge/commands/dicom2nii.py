"""``rtrecon dicom2nii DICOM_DIR OUT.nii.gz``: convert a DICOM folder through the live assembly
path (see :mod:`scanner_bridge.dicom2nii`); prints the NIfTI files written, one per line."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from scanner_bridge.dicom2nii import MissingVolumesError, NoVolumesError, dicom_series_to_nifti

__all__ = ["configure"]


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dicom_dir", type=Path, metavar="DICOM_DIR", help="folder of DICOM files (searched recursively)")
    parser.add_argument("out", type=Path, metavar="OUT.nii.gz",
                        help="output NIfTI; several runs are written as OUT_run-N.nii.gz")
    parser.add_argument("-q", "--quiet", action="store_true", help="report only errors")
    parser.add_argument("--allow-missing", action="store_true",
                        help="write the runs even when volumes are missing or corrupt (each gap an all-zero volume, "
                        "listed as MissingVolumes in the sidecar); without it such a folder is an error")
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.ERROR if args.quiet else logging.INFO, format="%(levelname)s %(message)s")
    try:
        paths = dicom_series_to_nifti(args.dicom_dir, args.out, allow_missing=args.allow_missing)
    except (NoVolumesError, MissingVolumesError) as exc:
        print(f"rtrecon dicom2nii: error: {exc}", file=sys.stderr)
        return 1
    for path in paths:
        print(path)
    return 0
