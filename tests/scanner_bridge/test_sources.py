"""The VolumeSource interface shared by the watcher, the DICOM node and the replay source."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from scanner_bridge.dicom_node import DicomNode
from scanner_bridge.replay import NiftiReplaySource
from scanner_bridge.sources import FileRejected, RunStarted, SourceEvent, VolumeMissing, VolumeReady, VolumeSource, log_problem
from scanner_bridge.volume import AcquiredVolume
from scanner_bridge.watcher import FolderWatcher


def test_every_source_is_a_volume_source_and_closes_as_a_context_manager(tmp_path: Path, dicom_dir: Path) -> None:
    ref = dicom_dir / "siemens_mosaic_ep2d_vd13" / "ref" / "2_ep2d_Asc.nii"
    with NiftiReplaySource(ref, fast=True) as replay:
        assert isinstance(replay, VolumeSource)
        first = next(iter(replay))
    assert isinstance(first, RunStarted)

    with FolderWatcher(tmp_path) as watcher:
        assert isinstance(watcher, VolumeSource)
    assert list(watcher) == []  # closed before iterating: ends at once

    with DicomNode("RTRECON", "127.0.0.1", 0) as node:
        assert isinstance(node, VolumeSource)
        port = node.port
    with socket.socket() as s:  # the node's port is free again once it is closed
        s.bind(("127.0.0.1", port))


def test_a_minimal_source_needs_only_iter_and_close() -> None:
    class Two(VolumeSource):
        def __iter__(self) -> Iterator[SourceEvent]:
            yield RunStarted(1, "s", "bold")
            yield VolumeMissing(1, 0, "s", "no file of this volume arrived")

        def close(self) -> None:
            pass

    assert [type(e) for e in Two()] == [RunStarted, VolumeMissing]
    with pytest.raises(TypeError):
        type("NoClose", (VolumeSource,), {"__iter__": lambda self: iter(())})()


def test_problems_are_logged_with_the_file_and_the_reason(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("scanner_bridge.test")
    volume = AcquiredVolume("s", 0, np.zeros((2, 2, 2)), np.eye(4), 1.0, None, None, ())
    with caplog.at_level(logging.INFO, logger="scanner_bridge.test"):
        log_problem(logger, FileRejected("/export/x.dcm", "not a DICOM file"))
        log_problem(logger, VolumeMissing(2, 7, "s", "no file of this volume arrived"))
        log_problem(logger, VolumeReady(1, volume))
        log_problem(logger, RunStarted(1, "s", "bold"))
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("WARNING", "rejected /export/x.dcm: not a DICOM file"),
        ("WARNING", "run 2: volume 7 missing: no file of this volume arrived"),
    ]
