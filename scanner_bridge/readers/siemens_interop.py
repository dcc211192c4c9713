"""Siemens XA "interoperability" export: classic MR Image Storage, one slice per file.

XA scanners can split their enhanced multi-frame images into classic single-slice files
(ImageType holds ``MFSPLIT``), usually gzip-compressed (``*.dcm.gz``). Every volume gets its own
SeriesNumber (7001, 7002, ...) and folder, with InstanceNumber restarting at 1, so grouping by
series would turn a run into one-volume series. All volumes name the enhanced series they were
split from in the Related Series Sequence (0008,1250): that UID is the run key.

Slices per volume: ``sSliceArray.lSize`` of the Phoenix protocol the files carry in
(0021,1019) (read once per run). Volume index: AcquisitionNumber - 1. Place in the volume:
InstanceNumber - 1. Slice times: each slice's time after the run start in (0021,1104), as
dcm2niix reads them (AcquisitionTime when absent).
"""

from __future__ import annotations

import re

from pydicom.dataset import Dataset

from scanner_bridge.readers.base import (
    ReaderError,
    SeriesReader,
    Slice,
    dicom_time_seconds,
    private_value,
    single_slice,
)

__all__ = ["SiemensInteropReader"]

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
_SLICE_COUNT = re.compile(rb"sSliceArray\.lSize\s*=\s*(\d+)")


class SiemensInteropReader(SeriesReader):
    format_name = "Siemens XA interoperability (single-slice)"

    @classmethod
    def accepts(cls, ds: Dataset) -> bool:
        image_type = [str(v).upper() for v in ds.get("ImageType", [])]
        return (str(ds.get("SOPClassUID", "")) == MR_IMAGE_STORAGE
                and "SIEMENS" in str(ds.get("Manufacturer", "")).upper()
                and "MFSPLIT" in image_type)

    @classmethod
    def run_key(cls, ds: Dataset) -> str:
        for related in ds.get("RelatedSeriesSequence", []):
            if "SeriesInstanceUID" in related:
                return str(related.SeriesInstanceUID)
        # Without the reference, XA numbers the split series <original series> * 1000 + volume.
        return f"{ds.get('StudyInstanceUID', '')}/{int(ds.SeriesNumber) // 1000}/{ds.get('ProtocolName', '')}"

    def _files_per_volume(self, ds: Dataset) -> int:
        protocol = private_value(ds, 0x0021, "SIEMENS MR SDS 01", 0x19)
        match = _SLICE_COUNT.search(protocol) if isinstance(protocol, bytes) else None
        if match is None:
            raise ReaderError("no slice count (sSliceArray.lSize) in the Siemens protocol (0021,1019)")
        return int(match.group(1))

    def volume_index(self, ds: Dataset) -> int:
        return int(ds.AcquisitionNumber) - 1

    def slot(self, ds: Dataset) -> int:
        return int(ds.InstanceNumber) - 1

    def slices(self, ds: Dataset, origin: str) -> list[Slice]:
        # (0021,1104): the slice's time after the run start, s, at the timing table's precision;
        # AcquisitionTime is rounded to the scanner clock's tick.
        time = private_value(ds, 0x0021, "SIEMENS MR SDI 02", 0x04)
        seconds = float(time) if time not in (None, "") else dicom_time_seconds(ds.get("AcquisitionTime"))
        return [single_slice(ds, origin, time=seconds)]
