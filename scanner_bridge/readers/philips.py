"""Philips slice files (classic MR Image Storage, one slice per file).

InstanceNumber is slice-major (volume 1 = instances 1, 4, 7, ... for three dynamics), so it is
not used: the volume index is TemporalPositionIdentifier - 1 and the place in the volume is the
private Slice Number MR (2001,100A) - 1; slices per volume is Number of Slices MR (2001,1018).

Values are Philips "floating point" values, as dcm2niix writes them (its default
UsePhilipsFloatNotDisplayScaling): FP = (stored x RescaleSlope + RescaleIntercept) /
(RescaleSlope x ScaleSlope), with the private ScaleSlope (2005,100E). Philips classic DICOM
carries no slice timing.
"""

from __future__ import annotations

from pydicom.dataset import Dataset

from scanner_bridge.readers.base import ReaderError, SeriesReader, Slice, private_value, single_slice

__all__ = ["PhilipsReader"]

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
_IMAGING_DD_001 = "Philips Imaging DD 001"
_MR_IMAGING_DD_001 = "Philips MR Imaging DD 001"


class PhilipsReader(SeriesReader):
    format_name = "Philips slice files"

    @classmethod
    def accepts(cls, ds: Dataset) -> bool:
        return (str(ds.get("SOPClassUID", "")) == MR_IMAGE_STORAGE
                and "PHILIPS" in str(ds.get("Manufacturer", "")).upper())

    def _files_per_volume(self, ds: Dataset) -> int:
        count = private_value(ds, 0x2001, _IMAGING_DD_001, 0x18)
        if count is None or int(count) < 1:
            raise ReaderError("no Number of Slices MR (2001,1018)")
        return int(count)

    def volume_index(self, ds: Dataset) -> int:
        if "TemporalPositionIdentifier" not in ds:
            raise ReaderError("no TemporalPositionIdentifier (0020,0100)")
        return int(ds.TemporalPositionIdentifier) - 1

    def slot(self, ds: Dataset) -> int:
        number = private_value(ds, 0x2001, _IMAGING_DD_001, 0x0A)
        if number is None:
            raise ReaderError("no Slice Number MR (2001,100A)")
        return int(number) - 1

    def slices(self, ds: Dataset, origin: str) -> list[Slice]:
        slope = float(ds.get("RescaleSlope", 1) or 1)
        intercept = float(ds.get("RescaleIntercept", 0) or 0)
        scale_slope = private_value(ds, 0x2005, _MR_IMAGING_DD_001, 0x0E)
        if scale_slope is not None and float(scale_slope) != 0.0:
            # FP = stored / SS + RI / (RS x SS)
            factor = slope * float(scale_slope)
            slope, intercept = 1.0 / float(scale_slope), intercept / factor
        return [single_slice(ds, origin, time=None, slope=slope, intercept=intercept)]
