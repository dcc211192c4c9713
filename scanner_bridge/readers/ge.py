"""GE slice files (classic MR Image Storage, one slice per file; also raw ``i*.MRDC.*`` names).

InstanceNumber runs volume-major: instances 1..N are volume 1, N+1..2N volume 2, where N is
ImagesInAcquisition (0020,1002) (GE's LocationsInAcquisition (0021,104F) when absent). So the
volume index is (InstanceNumber - 1) // N and the place in the volume (InstanceNumber - 1) % N.
NumberOfTemporalPositions is the planned number of volumes, not what exists (a series cut
short keeps saying 60).

Slice times come from the gzip-compressed Protocol Data Block (0025,101B): SLICEORDER 0
(sequential) or 1 (interleaved: odd prescribed locations first), spread evenly over TR, in the
prescribed location order (= the place in the volume). Hyperband (multiband) protocols are not
decoded: no slice times for them. GE writes the series start into every slice's
AcquisitionTime, so volumes get no acquisition time.
"""

from __future__ import annotations

import gzip
import re
import zlib

from pydicom.dataset import Dataset

from scanner_bridge.readers.base import ReaderError, SeriesReader, Slice, private_value, single_slice

__all__ = ["GEReader"]

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
_PDB_ENTRY = re.compile(r'^(\w+)\s+"([^"]*)"', re.MULTILINE)
# Protocol keys that mark a multiband (hyperband) acquisition, whose slice order the
# sequential/interleaved rule does not describe.
_MULTIBAND_KEYS = ("MBFACTOR", "HBFACTOR", "MULTIBAND")


class GEReader(SeriesReader):
    format_name = "GE slice files"

    def __init__(self, first: Dataset) -> None:
        super().__init__(first)
        self._slice_times = _protocol_slice_times(first, self.files_per_volume, self.tr)

    @classmethod
    def accepts(cls, ds: Dataset) -> bool:
        return (str(ds.get("SOPClassUID", "")) == MR_IMAGE_STORAGE
                and str(ds.get("Manufacturer", "")).upper().startswith("GE"))

    def _files_per_volume(self, ds: Dataset) -> int:
        count = ds.get("ImagesInAcquisition") or private_value(ds, 0x0021, "GEMS_RELA_01", 0x4F)
        if not count or int(count) < 1:
            raise ReaderError("no ImagesInAcquisition (0020,1002) or GE locations count (0021,104F)")
        return int(count)

    def volume_index(self, ds: Dataset) -> int:
        return (int(ds.InstanceNumber) - 1) // self.files_per_volume

    def slot(self, ds: Dataset) -> int:
        return (int(ds.InstanceNumber) - 1) % self.files_per_volume

    def acquisition_time(self, ds: Dataset) -> float | None:
        return None

    def slices(self, ds: Dataset, origin: str) -> list[Slice]:
        time = self._slice_times[self.slot(ds)] if self._slice_times else None
        return [single_slice(ds, origin, time=time)]


def _protocol_slice_times(ds: Dataset, n_slices: int, tr: float) -> list[float] | None:
    protocol = _protocol_data_block(ds)
    if protocol is None or any(key in protocol for key in _MULTIBAND_KEYS):
        return None
    order = protocol.get("SLICEORDER")
    if order == "0":
        acquisition_order = list(range(n_slices))
    elif order == "1":
        acquisition_order = list(range(0, n_slices, 2)) + list(range(1, n_slices, 2))
    else:
        return None
    times = [0.0] * n_slices
    for rank, location in enumerate(acquisition_order):
        times[location] = rank * tr / n_slices
    return times


def _protocol_data_block(ds: Dataset) -> dict[str, str] | None:
    """GE's Protocol Data Block: a 4-byte length, then a gzip'd text of ``KEY "value"`` lines."""
    raw = private_value(ds, 0x0025, "GEMS_SERS_01", 0x1B)
    if not isinstance(raw, bytes) or len(raw) < 6:
        return None
    try:
        text = gzip.decompress(raw[4:]).decode("latin-1")
    except (OSError, EOFError, zlib.error):
        return None
    return dict(_PDB_ENTRY.findall(text))
