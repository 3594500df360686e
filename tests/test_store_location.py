"""A store lives on one host's local disk: on a network filesystem SQLite's locks and WAL do not hold, so the
stages refuse such a path in one line, before a model loads."""

from __future__ import annotations

import pytest

from graphs import judge, simulate
from graphs.store import filesystem_type, network_filesystem


def mountinfo(tmp_path, shared):
    """A mount table: / on ext4, `shared` (with a space in its name, escaped as the kernel does) on NFS."""
    escaped = str(shared).replace(" ", "\\040")
    text = ("22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
            f"40 22 0:50 / {escaped} rw,relatime shared:9 - nfs4 server:/export rw,vers=4.2\n")
    path = tmp_path / "mountinfo"
    path.write_text(text)
    return path


def test_the_longest_mount_point_decides(tmp_path):
    shared = tmp_path / "lab share"
    shared.mkdir()
    table = mountinfo(tmp_path, shared)
    assert filesystem_type(shared / "runs", table) == "nfs4" and network_filesystem(shared, table) == "nfs4"
    assert filesystem_type(tmp_path, table) == "ext4" and network_filesystem(tmp_path, table) is None
    assert filesystem_type(str(shared) + "-not", table) == "ext4"  # a sibling whose name starts the same
    assert filesystem_type(tmp_path, tmp_path / "absent") is None  # no mount table: nothing to refuse


@pytest.mark.parametrize("stage", [simulate, judge])
def test_a_stage_refuses_a_store_on_a_network_filesystem(tmp_path, monkeypatch, stage):
    shared = tmp_path / "lab share"
    shared.mkdir()
    table = mountinfo(tmp_path, shared)
    import graphs.store

    real = graphs.store.filesystem_type
    monkeypatch.setattr(graphs.store, "filesystem_type", lambda path, _=None: real(path, table))
    db = shared / "runs" / "chn.db"
    with pytest.raises(SystemExit, match=r"^error: db: .*chn.db is on a network filesystem \(nfs4\), where SQLite's "
                                         r"locks and WAL do not hold: put the store on this host's local disk"):
        stage.main(["--culture", "CHN", "--model", "puppet", "--db", str(db), "--no-progress"])
    assert not db.parent.exists()  # nothing written
    monkeypatch.setenv("CLCA_ALLOW_NETWORK_STORE", "1")
    assert network_filesystem(shared, table) is None
