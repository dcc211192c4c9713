"""rtrecon convert-unclip: the command on a checkpoint built from the manifest (1/32 width)."""

from __future__ import annotations

from safetensors.torch import save_file

from rtrecon.cli import main
from rtrecon.reconstruction.unclip import load_config, save_config


def test_convert_unclip_command_writes_the_folder(tmp_path, reduced_checkpoint, reduced_config, capsys):
    save_file(reduced_checkpoint, tmp_path / "unclip6.safetensors")
    config_json = save_config(reduced_config, tmp_path / "arch")
    out = tmp_path / "out"
    assert main(["convert-unclip", str(tmp_path / "unclip6.safetensors"), str(out), "--config", str(config_json), "--dtype", "bfloat16"]) == 0
    assert load_config(out) == reduced_config
    assert (out / "vae" / "diffusion_pytorch_model.safetensors").is_file()
    assert str(out) in capsys.readouterr().out


def test_a_checkpoint_of_another_architecture_fails_naming_file_and_keys(tmp_path, reduced_checkpoint, capsys):
    path = tmp_path / "other.safetensors"
    save_file(reduced_checkpoint, path)
    assert main(["convert-unclip", str(path), str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "other.safetensors" in err and "wrong shape" in err
    assert not (tmp_path / "out").exists()
    assert main(["convert-unclip", str(tmp_path / "absent.ckpt"), str(tmp_path / "out")]) == 1
    assert "absent.ckpt" in capsys.readouterr().err
