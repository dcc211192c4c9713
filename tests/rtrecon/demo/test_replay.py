"""``rtrecon replay nsd``: its input errors (its live path is the demo's: :func:`rtrecon.demo.live.run_session`)."""

from __future__ import annotations

from rtrecon.cli import main


def test_replay_errors_name_the_problem(demo_run, tmp_path, capsys):
    (tmp_path / "nsd").mkdir()
    assert main(["replay", "nsd", "--root", str(tmp_path / "nsd"), "--subject", "1", "--session", "1"]) == 2
    assert "error" in capsys.readouterr().err
    args = ["replay", "nsd", "--root", str(demo_run.dataset), "--subject", "1", "--session", "2", "--out", str(tmp_path)]
    assert main([*args, "--checkpoint", str(tmp_path / "none.pth")]) == 2
    assert "none.pth: no such checkpoint" in capsys.readouterr().err
    assert main([*args, "--targets", str(tmp_path / "none.npy")]) == 2
    assert "none.npy: no CLIP tokens" in capsys.readouterr().err
