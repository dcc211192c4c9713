"""What a live session leaves on disk: the config the processes shared, the gallery, BIDS, logs."""

from __future__ import annotations

import numpy as np
import pandas as pd

from rtrecon.config import load_config
from rtrecon.data.nsd import NSDDataset


def test_session_config_gallery_and_bids_outputs(demo_run):
    folder = demo_run.session_dir
    config = load_config(folder / "session.toml")
    assert config.session.subject == "01" and config.session.session == "02"
    assert config.decoder.checkpoint.is_file() and config.engine.roi_mask.is_file()
    assert len({config.network.volumes, config.network.events, config.network.results, config.network.status}) == 4
    nsd = NSDDataset(demo_run.dataset)
    with np.load(config.decoder.gallery) as g:
        ids = list(g["ids"])
        embeddings = g["embeddings"]
    shown = sorted(set(nsd.events(1, 2, 1)["image_id"]))
    assert ids == [f"nsd:{i}" for i in shown]
    truth = np.load(demo_run.dataset / "synthetic_truth" / "embeddings.npy")
    np.testing.assert_array_equal(embeddings, truth[np.array(shown) - 1])
    func = folder / "sub-01" / "ses-02" / "func"
    assert (func / "sub-01_ses-02_task-perception_run-1_bold.nii.gz").is_file()
    events = pd.read_csv(func / "sub-01_ses-02_task-perception_run-1_events.tsv", sep="\t")
    assert len(events) == 63
    derivatives = folder / "derivatives" / "rtrecon" / "sub-01" / "ses-02" / "func"
    assert len(list(derivatives.glob("*_desc-trial*decoded.npz"))) == 63
    assert {p.name for p in (folder / "logs").iterdir()} == {"engine.log", "bridge_run-01.log", "participant_run-01.log"}
